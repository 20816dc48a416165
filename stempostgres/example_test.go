package stempostgres_test

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
)

// A task enqueued in the caller's own transaction exists if and only if
// the transaction commits: here the order row and the email task that
// confirms it are written together. (Not run: it needs a Postgres server;
// TestTxEnqueue runs the same steps.)
func Example_transactionalEnqueue() {
	ctx := context.Background()
	url := "postgres://app@db.internal:5432/shop?sslmode=verify-full&search_path=stem"
	opts := stemdriver.Options{Namespace: "shop"}

	broker, err := stempostgres.OpenBroker(ctx, url, opts)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer broker.Close()
	results, err := stempostgres.OpenResults(ctx, url, opts)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer results.Close()
	app, err := pgxpool.New(ctx, url) // the application's own pool
	if err != nil {
		fmt.Println(err)
		return
	}
	defer app.Close()

	err = pgx.BeginFunc(ctx, app, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO orders (id, email) VALUES ($1, $2)", 42, "ada@example.com"); err != nil {
			return err
		}
		client, err := stem.NewClient(stem.ClientConfig{Broker: broker.InTx(tx), Results: results.InTx(tx)})
		if err != nil {
			return err
		}
		_, err = client.Enqueue(ctx, "email.confirm", map[string]any{"order": 42}, stem.EnqueueOptions{})
		return err // a rollback takes the task back with the order
	})
	if err != nil {
		fmt.Println(err)
	}
}
