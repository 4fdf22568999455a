package config

import (
	"errors"
	"fmt"
	"slices"

	"github.com/anaplan-proxy/anaplan-proxy/proxy"
)

// check returns every problem at once, one per line: first those of single
// values, found where they were read, in key order; then those between
// keys. On success it compiles the values that need several keys.
func (c *Config) check() error {
	var errs []error
	for _, s := range settings {
		errs = append(errs, c.origin.errs[s.key]...)
	}
	errs = append(errs, c.checkOverlap()...)
	if c.Compat.Enabled {
		errs = append(errs, c.checkCompatOverlap()...)
	}
	if c.Store.Type == StorePostgres {
		if c.Store.PostgresDSN.IsZero() && !c.failed("store.postgres_dsn") {
			errs = append(errs, c.keyError("store.postgres_dsn", "is empty, but store.type is postgres (%s); give the connection string, like postgres://anaplan_proxy@db.example/anaplan?sslmode=verify-full", c.Where("store.type")))
		}
		if c.Store.KeyFile == "" && !c.failed("store.key_file") {
			errs = append(errs, c.keyError("store.key_file", "is empty, but store.type is postgres (%s); create one with: openssl rand -base64 32 > /etc/anaplan-proxy/store.key", c.Where("store.type")))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if c.Upstream.ProxyURL != nil {
		up, err := c.upstreamProxy()
		if err != nil {
			return c.keyError("upstream.proxy", "%v", err)
		}
		c.Upstream.Proxy = up
	}
	return nil
}

// failed reports whether key's value was refused where it was read.
func (c *Config) failed(key string) bool { return len(c.origin.errs[key]) > 0 }

// checkOverlap refuses a tunnel host pattern that is also injected: the
// proxy could not tell which the user meant.
func (c *Config) checkOverlap() []error {
	var errs []error
	const key = "tunnel.hosts"
	for i, h := range c.Tunnel.Hosts {
		if j := indexSame(c.Inject.Hosts, h); j >= 0 {
			errs = append(errs, fmt.Errorf("%s: %s: %q is also in inject.hosts (%s); a host is either injected or tunnelled, not both",
				c.whereItem(key, i), key, h, c.whereItem("inject.hosts", j)))
		}
	}
	return errs
}

// checkCompatOverlap refuses a compat host that is also injected or
// tunnelled.
func (c *Config) checkCompatOverlap() []error {
	var errs []error
	for _, other := range []struct {
		key   string
		hosts []HostPattern
		what  string
	}{{"inject.hosts", c.Inject.Hosts, "injected"}, {"tunnel.hosts", c.Tunnel.Hosts, "tunnelled"}} {
		for i, h := range c.Compat.Hosts {
			if j := indexSame(other.hosts, h); j >= 0 {
				errs = append(errs, fmt.Errorf("%s: compat.hosts: %q is also in %s (%s); a host is either answered locally or %s, not both",
					c.whereItem("compat.hosts", i), h, other.key, c.whereItem(other.key, j), other.what))
			}
		}
	}
	return errs
}

// upstreamProxy compiles upstream.proxy with upstream.no_proxy.
func (c *Config) upstreamProxy() (*proxy.UpstreamProxy, error) {
	return proxy.ParseUpstreamProxy(c.Upstream.ProxyURL.String(), c.Upstream.NoProxy)
}

// indexSame is the index of the first pattern in list that is the same as
// h, or -1.
func indexSame(list []HostPattern, h HostPattern) int {
	return slices.IndexFunc(list, h.Same)
}

// applyCompatDefaults lets an explicit choice win over the built-in compat
// hosts: a default compat host that inject.hosts or tunnel.hosts names
// (au1a.app2.anaplan.com tunnelled for Australia's OAuth pages, say) is
// left to that list. An explicit compat.hosts is taken as written.
func (c *Config) applyCompatDefaults() {
	if c.Where("compat.hosts") != "default" {
		return
	}
	named := slices.Concat(c.Inject.Hosts, c.Tunnel.Hosts)
	c.Compat.Hosts = slices.DeleteFunc(slices.Clone(c.Compat.Hosts), func(h HostPattern) bool { return indexSame(named, h) >= 0 })
}
