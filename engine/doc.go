// Package engine is the encrypted decoder: it runs model.Forward on CKKS
// ciphertexts through package he. The server side (Engine, Session) holds the
// weights and the client's public evaluation keys, never a secret key; the
// client side (Client) holds the secret key, encrypts tokens, answers refresh
// rounds with fresh encryptions and decrypts the flooded logits. Spec is the
// public, JSON-serializable contract between the two.
//
// Imports: model, approx, he (and Lattigo, gonum). Nothing network-facing:
// the service carries RefreshFunc rounds and ciphertexts over the wire.
package engine
