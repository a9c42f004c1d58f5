// Package bench measures communication and latency of private inference for
// the shipped models: baseline against entropy-guided, interactive refresh
// against bootstrapping, across context lengths and presets.
//
// Measure runs a matrix (models × presets × refresh modes × contexts): for
// each model and preset it builds the engine, serves it with the server
// package on a loopback port and talks to it with the client package over
// real gRPC, as `entropi demo` does. It records
//
//   - setup: engine build (server), key generation (client, timed through a
//     wrapper of the engine's client plugged in as client.Options.NewCrypto),
//     key bytes uploaded;
//   - prefill: latency, CPU time, bytes, refresh rounds;
//   - per decode token: latency as the client sees it (median, min, max),
//     process CPU time (both sides share the process; CPU time does not grow
//     when other jobs load the machine, wall time does), bytes up and down,
//     refresh rounds and round trips, and where the time goes (Categories:
//     the engine's per-kind timings from the server's Done message, with
//     nested refresh rounds taken out and split into the client's share,
//     timed at the client, and the rest; client encryption and decryption;
//     transport and everything else);
//   - accuracy: the decrypted logits against the exact plaintext model and
//     the approximation backend on the same prefixes (teacher forcing);
//   - projections onto a LAN and the paper's WAN (Network.Project: the
//     measured time plus bytes/bandwidth plus round trips × RTT), and the
//     baseline/entropy-guided ratios next to the paper's (Compare,
//     PaperNumbers).
//
// Results are written as results.json (Schema), markdown (WriteMarkdown)
// and PNG charts drawn with gonum/plot (WriteCharts).
//
// The bootstrapped mode (ModeBootstrap) runs over the same loopback gRPC
// path at bootstrapping presets (the engine in bootstrap mode; the client
// uploads bootstrapping keys and answers no round) and records bootstraps
// per token; at other presets, and at N=2^16 without BootstrapMemoryGiB
// available, it is recorded as skipped with the reason.
//
// Imports: engine, server, client, protocol, he, model, approx (everything
// below cmd/); nothing but cmd/entropi imports bench.
package bench
