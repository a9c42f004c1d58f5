// Package protocol holds entropi's wire format: the gRPC service definition
// (entropi.proto, service entropi.v1.Entropi), its committed generated code
// (regenerate with gen.sh), the protocol version, validation of every message
// that arrives (validate.go: ciphertexts, evaluation and public keys, refresh
// rounds, presets; size prefixes are checked before Lattigo allocates from
// them), and byte accounting per message kind and phase (accounting.go).
//
// Imports: the standard library, gRPC and protobuf, Lattigo, and entropi/he
// for ciphertext and key validation.
package protocol
