// Command entropi is the command-line entry point: demo, serve, generate,
// bench, train, eval, entropy, sample.
package main

import (
	"fmt"
	"os"
	"sort"
)

// command is one subcommand: it receives its own arguments.
type command struct {
	summary string
	run     func(args []string) error
}

var commands = map[string]command{
	"demo": {"run the encrypted demo on the shipped model (server and client in one process)", runDemo},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: entropi <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		os.Exit(2)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "entropi: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err := cmd.run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "entropi %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
