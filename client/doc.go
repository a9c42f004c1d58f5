// Package client is the embeddable Go client: it generates keys locally,
// uploads evaluation keys, streams encrypted prompts, answers refresh rounds
// and decrypts logits. The secret key never leaves it.
//
// Imports: entropi/protocol, entropi/he, entropi/model. Not yet built.
package client
