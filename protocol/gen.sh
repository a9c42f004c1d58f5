#!/bin/sh
# Regenerates entropi.pb.go and entropi_grpc.pb.go from entropi.proto.
# Installs what it needs: protoc (Debian/Ubuntu apt), protoc-gen-go at the
# protobuf version of go.mod, protoc-gen-go-grpc at a released version.
set -eu
cd "$(dirname "$0")"
PROTOBUF_VERSION=v1.36.12      # = google.golang.org/protobuf in go.mod
GRPC_GEN_VERSION=v1.6.2        # google.golang.org/grpc/cmd/protoc-gen-go-grpc

if ! command -v protoc >/dev/null 2>&1; then
	apt-get update && apt-get install -y protobuf-compiler
fi
GOBIN="$(go env GOPATH)/bin"
export PATH="$GOBIN:$PATH"
GOFLAGS= go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOBUF_VERSION"
GOFLAGS= go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$GRPC_GEN_VERSION"

protoc --proto_path=. \
	--go_out=. --go_opt=paths=source_relative \
	--go-grpc_out=. --go-grpc_opt=paths=source_relative \
	entropi.proto
gofmt -l . >/dev/null
echo "regenerated: $(protoc --version), protoc-gen-go $PROTOBUF_VERSION, protoc-gen-go-grpc $GRPC_GEN_VERSION"
