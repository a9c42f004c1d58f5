// Package bench measures communication and latency of private inference for
// the shipped models: baseline against entropy-guided, interactive refresh
// against bootstrapping, across context lengths and presets.
//
// Imports: everything above it. Not yet built.
package bench
