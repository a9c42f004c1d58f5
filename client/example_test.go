package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"time"

	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/model"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

// Generate against a running server (entropi serve): keys are made here,
// the secret key never leaves the process.
func Example() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "127.0.0.1:7300", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	sess, err := c.NewSession(ctx, "") // the server's only model
	if err != nil {
		log.Fatal(err)
	}
	defer sess.Close()
	tok := sess.Model.Tokenizer
	res, err := sess.Generate(ctx, tok.Encode([]byte("func main() {")), 16, client.GenerateOptions{}, func(t client.Token) error {
		b, _ := tok.Decode([]int{t.ID})
		fmt.Print(string(b)) // streamed as each token is decrypted
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("\nsetup %d B up; prefill %d B up, %d B down; %.1f s/token\n",
		res.Stats.Setup.BytesUp, res.Stats.Prefill.BytesUp, res.Stats.Prefill.BytesDown,
		res.Stats.Decode.Seconds/float64(len(res.Tokens)-1))
}

// Tokens as a Go iterator, with temperature and nucleus sampling.
func ExampleSession_Tokens() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "127.0.0.1:7300", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	sess, err := c.NewSession(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer sess.Close()
	opt := client.GenerateOptions{Sample: model.SampleOptions{Temperature: 0.8, TopP: 0.95}, Seed: 42}
	for t, err := range sess.Tokens(ctx, []int{1, 2, 3}, 32, opt) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(t.Pos, t.ID, t.Latency, t.BytesUp, t.BytesDown)
	}
}

// A complete round trip on loopback with the service's small stand-in model
// (insecure test preset: a demonstration of the API, not of security).
func ExampleSession_Generate() {
	m, err := servertest.NewModel("fake")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := server.New(server.Config{AllowInsecure: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, m)
	if err != nil {
		log.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis, time.Second) }()
	defer func() { stop(); <-done }()

	c, err := client.Dial(context.Background(), lis.Addr().String(), &client.Options{
		AllowInsecurePresets: true,
		NewCrypto: func(info *client.ModelInfo, allow bool) (client.Crypto, error) {
			return servertest.NewCrypto(info.Spec, allow)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	sess, err := c.NewSession(context.Background(), "fake")
	if err != nil {
		log.Fatal(err)
	}
	defer sess.Close()
	res, err := sess.Generate(context.Background(), []int{10, 20}, 4, client.GenerateOptions{}, func(t client.Token) error {
		fmt.Printf("position %d: token %d\n", t.Pos, t.ID)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Tokens, "plaintext:", servertest.Greedy([]int{10, 20}, 4))
	// Output:
	// position 2: token 18
	// position 3: token 15
	// position 4: token 14
	// position 5: token 12
	// [18 15 14 12] plaintext: [18 15 14 12]
}
