// Command drkit-ferretdb runs FerretDB (github.com/FerretDB/FerretDB/ferretdb, the embeddable
// package) with its SQLite backend on a loopback TCP address, for drkit's sandbox.
//
// FerretDB's own cmd cannot be built with a plain `go install` (a generated version file is
// missing from the module), so drkit builds this small program instead; see
// drkit/sandbox/mongodb.py.  It logs to stderr and stops cleanly on SIGTERM or SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	dataDir := flag.String("data-dir", "", "existing directory for the SQLite databases")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()

	if err := run(*listen, *dataDir, *logLevel); err != nil {
		fmt.Fprintf(os.Stderr, "drkit-ferretdb: %v\n", err)
		os.Exit(1)
	}
}

func run(listen, dataDir, logLevel string) error {
	if dataDir == "" {
		return fmt.Errorf("-data-dir is required")
	}

	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}

	var level slog.Level
	if err = level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	sqliteURL := (&url.URL{Scheme: "file", Path: dir + "/"}).String()

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	logger.Info("drkit-ferretdb starting", "listen", listen, "sqlite", sqliteURL, "pid", os.Getpid())

	if err = f.Run(ctx); err != nil {
		return err
	}

	logger.Info("drkit-ferretdb stopped")

	return nil
}
