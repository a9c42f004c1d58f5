// Package server is the private-inference service: it loads models
// (checkpoints → engines), holds sessions (a client's public evaluation keys
// and public key; during a generation, the model session with its encrypted
// KV cache) and runs the encrypted decoder for each. It enforces caps on
// sessions, key memory, messages and tokens, drops idle sessions and those
// whose client went away, and logs with log/slog. It never holds a secret
// key: nothing in this package can name one (a test checks the source), and
// a test walks a live server's memory for one.
//
// The service runs any Model (server.go, generate.go); EngineModel adapts
// the encrypted decoder of package engine, and servertest has a small
// stand-in for fast tests.
//
// Imports: entropi/protocol, entropi/he, entropi/model, entropi/engine,
// entropi/approx, gRPC.
package server
