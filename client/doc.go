// Package client is the embeddable Go client: Dial a server, NewSession
// (keys are generated locally; only public keys are uploaded), Generate
// with streamed tokens (a callback, or the Tokens iterator) and sampling
// options, per-phase Stats (bytes up and down, seconds), Close. It answers
// refresh rounds with fresh encryptions and decrypts logits; the secret key
// never leaves it. Insecure presets are refused unless the caller allows
// them, whatever the server says.
//
// Imports: entropi/protocol, entropi/he, entropi/model, entropi/engine, gRPC.
package client
