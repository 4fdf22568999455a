package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestConfigPointsTheProxyAtTheFakeAndTheUpstream(t *testing.T) {
	tests := []struct {
		name         string
		inject       string
		allowPrivate bool
		wantHosts    []string
	}{
		{"one host", "localhost:8443", false, []string{"localhost:8443"}},
		{"two hosts, private allowed", "localhost:8443, 127.0.0.1:8443", true, []string{"localhost:8443", "127.0.0.1:8443"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			upstreamCA := filepath.Join(dir, "upstream-ca.pem")
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // write the configuration and return at once
			if err := run(ctx, filepath.Join(dir, "s"), tt.inject, upstreamCA, "warn", tt.allowPrivate); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(dir, "s", "config.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			var cfg struct {
				Listen   string `yaml:"listen"`
				LogLevel string `yaml:"log_level"`
				OAuth    struct {
					TokenURL string `yaml:"token_url"`
					CAFile   string `yaml:"ca_file"`
				} `yaml:"oauth"`
				Inject struct {
					Hosts []string `yaml:"hosts"`
				} `yaml:"inject"`
				Upstream struct {
					CAFile       string `yaml:"ca_file"`
					AllowPrivate bool   `yaml:"allow_private"`
				} `yaml:"upstream"`
			}
			if err := yaml.Unmarshal(b, &cfg); err != nil {
				t.Fatalf("config is not YAML: %v\n%s", err, b)
			}
			if len(cfg.Inject.Hosts) != len(tt.wantHosts) {
				t.Fatalf("inject.hosts = %q, want %q", cfg.Inject.Hosts, tt.wantHosts)
			}
			for i := range tt.wantHosts {
				if cfg.Inject.Hosts[i] != tt.wantHosts[i] {
					t.Errorf("inject.hosts = %q, want %q", cfg.Inject.Hosts, tt.wantHosts)
				}
			}
			if cfg.Upstream.CAFile != upstreamCA || cfg.Upstream.AllowPrivate != tt.allowPrivate {
				t.Errorf("upstream = %+v, want ca_file %s and allow_private %v", cfg.Upstream, upstreamCA, tt.allowPrivate)
			}
			if cfg.OAuth.TokenURL == "" || cfg.OAuth.CAFile == "" || cfg.Listen == "" || cfg.LogLevel != "warn" {
				t.Errorf("incomplete configuration:\n%s", b)
			}
		})
	}
}

func TestRunNeedsItsFlags(t *testing.T) {
	if err := run(context.Background(), "", "localhost:1", "ca.pem", "warn", false); err == nil {
		t.Error("run without -dir succeeded")
	}
}
