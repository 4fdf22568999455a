// Command session gives the benchmark an anaplan-proxy with a real session:
// it starts the fake Anaplan of internal/anaplantest with auto-approval,
// writes an anaplan-proxy configuration that points the device flow at it
// and injects tokens for the benchmark's upstream, prints where everything
// is, and runs until it is signalled.
//
// The proxy and admin ports are chosen here (free loopback ports) because
// the proxy, logging at warn, does not announce the ports it listens on.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

func main() {
	dir := flag.String("dir", "", "`directory` for the configuration, the fake's CA and the proxy's state (created)")
	inject := flag.String("inject-hosts", "", "comma-separated `host:port` names of the benchmark upstream, which get the token")
	upstreamCA := flag.String("upstream-ca", "", "PEM `file` of the upstream's CA")
	logLevel := flag.String("log-level", "warn", "the proxy's log `level`")
	allowPrivate := flag.Bool("allow-private", false, "set upstream.allow_private, which lets the proxy connect to the loopback upstream")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *dir, *inject, *upstreamCA, *logLevel, *allowPrivate); err != nil {
		logger.Error("session failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir, inject, upstreamCA, logLevel string, allowPrivate bool) error {
	if dir == "" || inject == "" || upstreamCA == "" {
		return errors.New("-dir, -inject-hosts and -upstream-ca are required")
	}
	absCA, err := filepath.Abs(upstreamCA)
	if err != nil {
		return fmt.Errorf("upstream CA path: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	fake, err := anaplantest.Start(anaplantest.Options{
		AccessTokenLifetime: time.Hour,
		Interval:            time.Second,
		AutoApprove:         true,
	})
	if err != nil {
		return fmt.Errorf("starting the fake Anaplan: %w", err)
	}
	defer fake.Close()
	fakeCA, err := fake.WriteCAFile(dir)
	if err != nil {
		return fmt.Errorf("writing the fake's CA: %w", err)
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	proxyAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	adminAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	stateDir := filepath.Join(dir, "state")
	configPath := filepath.Join(dir, "config.yaml")
	cfg := fmt.Sprintf(`listen: %q
admin_listen: %q
state_dir: %q
log_level: %s
log_format: json
oauth:
  client_id: %q
  device_authorization_url: %q
  token_url: %q
  ca_file: %q
inject:
  hosts: %s
upstream:
  ca_file: %q
`, proxyAddr, adminAddr, stateDir, logLevel, fake.ClientID(), fake.DeviceAuthURL(), fake.TokenURL(), fakeCA, yamlList(strings.Split(inject, ",")), absCA)
	if allowPrivate {
		cfg += "  allow_private: true\n"
	}
	if err := os.WriteFile(configPath, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("writing the configuration: %w", err)
	}
	fmt.Printf("config=%s\nproxy_listen=%s\nadmin_listen=%s\nstate_dir=%s\n", configPath, proxyAddr, adminAddr, stateDir)
	os.Stdout.Sync()
	<-ctx.Done()
	return nil
}

// yamlList renders strings as a YAML flow sequence of quoted scalars.
func yamlList(items []string) string {
	quoted := make([]string, len(items))
	for i, it := range items {
		quoted[i] = strconv.Quote(strings.TrimSpace(it))
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

// freePorts asks the kernel for n distinct free loopback ports. They are
// released before the proxy binds them; on a quiet machine nothing else
// takes them in between.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
