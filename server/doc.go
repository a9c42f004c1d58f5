// Package server is the private-inference service: it loads models, holds
// sessions (evaluation keys, encrypted KV caches) and runs the encrypted
// decoder for each session. It never holds a secret key.
//
// Imports: entropi/protocol, entropi/he, entropi/model. Not yet built.
package server
