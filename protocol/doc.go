// Package protocol holds entropi's wire format: the gRPC service definition,
// its committed generated code, the protocol version, validation of every
// message that arrives, and byte accounting per message kind and phase.
//
// Imports: the standard library, gRPC and protobuf, and entropi/he for
// ciphertext and key validation. Not yet built: see the service issue.
package protocol
