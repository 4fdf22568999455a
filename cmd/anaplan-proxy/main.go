// Command anaplan-proxy holds one Anaplan OAuth device-flow session and adds
// its access token to the requests that scripts send to Anaplan through it.
//
// Usage:
//
//	anaplan-proxy serve   [--config FILE] [flags]   run the proxy
//	anaplan-proxy login   [--config FILE] [flags]   sign in with the device flow
//	anaplan-proxy logout  [--config FILE] [flags]   end the stored session
//	anaplan-proxy status  [--config FILE] [flags]   show the session state
//	anaplan-proxy ca      [--config FILE] [flags]   print the local CA certificate
//	anaplan-proxy doctor  [--config FILE] [flags]   check the set-up
//	anaplan-proxy demo    [flags]                   run against a fake Anaplan
//	anaplan-proxy version
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes shared by all commands. status documents its own on top.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 64 // EX_USAGE
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usageText = `anaplan-proxy holds one Anaplan OAuth session and adds its token to requests sent through it.

Usage: anaplan-proxy <command> [--config FILE] [flags]

Commands:
  serve     run the proxy (default listen 127.0.0.1:3128, admin 127.0.0.1:9464)
  login     sign in with the OAuth device flow and store the session
  logout    revoke (when configured) and delete the stored session
  status    show the session state; exit 0 usable, 1 degraded, 2 login required, 3 not configured or error
  ca        print the local CA certificate (PEM) that clients must trust
  doctor    check the set-up, one line per check with what to do when it fails; exit 0 when all pass
  demo      run a fake Anaplan, log in to it and serve the proxy, printing a curl command to try
  store-init  create or upgrade the tables of a PostgreSQL session store (store.type: postgres)
  version   print the version

Run 'anaplan-proxy <command> --help' for the flags of a command.
`

// run dispatches a command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "serve":
		err = cmdServe(ctx, rest, stdout, stderr)
	case "login":
		err = cmdLogin(ctx, rest, stdout, stderr)
	case "logout":
		err = cmdLogout(ctx, rest, stdout, stderr)
	case "status":
		return cmdStatus(ctx, rest, stdout, stderr)
	case "doctor":
		return cmdDoctor(ctx, rest, stdout, stderr)
	case "ca":
		err = cmdCA(ctx, rest, stdout, stderr)
	case "demo":
		err = cmdDemo(ctx, rest, stdout, stderr)
	case "store-init":
		err = cmdStoreInit(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "anaplan-proxy %s\n", buildVersion())
		return exitOK
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usageText)
		return exitOK
	default:
		fmt.Fprintf(stderr, "anaplan-proxy: unknown command %q\n\n%s", cmd, usageText)
		return exitUsage
	}
	if err == nil {
		return exitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		if ue.err != nil {
			fmt.Fprintf(stderr, "anaplan-proxy %s: %v\n", cmd, ue.err)
		}
		return exitUsage
	}
	fmt.Fprintf(stderr, "anaplan-proxy %s: %v\n", cmd, err)
	return exitError
}

// usageError marks a bad command line; run prints it and exits with
// exitUsage. A nil err means the usage was already printed (--help).
type usageError struct{ err error }

func (u usageError) Error() string {
	if u.err == nil {
		return "usage"
	}
	return u.err.Error()
}
