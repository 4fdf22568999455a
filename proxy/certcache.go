package proxy

import (
	"container/list"
	"crypto/tls"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

const (
	// leafCacheSize bounds the number of leaf certificates kept in memory.
	leafCacheSize = 1024
	// leafRenewBefore is how long before its expiry a cached leaf is
	// replaced, so that a client never receives one about to expire.
	leafRenewBefore = 3 * 24 * time.Hour
)

// leafCache holds leaf certificates by host, evicting the least recently
// used entry when full, and generates each missing leaf once however many
// handshakes ask for it at the same time.
type leafCache struct {
	sign     func(host string, now time.Time) (*tls.Certificate, error)
	observe  func(result string) // "hit" or "miss"; may be nil
	now      func() time.Time
	size     int
	group    singleflight.Group
	mu       sync.Mutex
	entries  map[string]*list.Element // of *leafEntry
	lru      *list.List
	generate atomic.Int64 // leaves signed, for tests and benchmarks
}

type leafEntry struct {
	host string
	cert *tls.Certificate
}

func newLeafCache(size int, sign func(string, time.Time) (*tls.Certificate, error), observe func(string)) *leafCache {
	return &leafCache{
		sign:    sign,
		observe: observe,
		now:     time.Now,
		size:    size,
		entries: make(map[string]*list.Element),
		lru:     list.New(),
	}
}

// get returns a valid leaf for host, signing one if none is cached or the
// cached one is near its expiry.
func (c *leafCache) get(host string) (*tls.Certificate, error) {
	now := c.now()
	c.mu.Lock()
	if el, ok := c.entries[host]; ok {
		e := el.Value.(*leafEntry)
		if now.Add(leafRenewBefore).Before(e.cert.Leaf.NotAfter) {
			c.lru.MoveToFront(el)
			c.mu.Unlock()
			c.report("hit")
			return e.cert, nil
		}
	}
	c.mu.Unlock()
	c.report("miss")
	v, err, _ := c.group.Do(host, func() (any, error) {
		// A flight that just finished may have stored a fresh leaf.
		c.mu.Lock()
		if el, ok := c.entries[host]; ok {
			e := el.Value.(*leafEntry)
			if c.now().Add(leafRenewBefore).Before(e.cert.Leaf.NotAfter) {
				c.mu.Unlock()
				return e.cert, nil
			}
		}
		c.mu.Unlock()
		cert, err := c.sign(host, c.now())
		if err != nil {
			return nil, err
		}
		c.generate.Add(1)
		c.put(host, cert)
		return cert, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

func (c *leafCache) put(host string, cert *tls.Certificate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[host]; ok {
		el.Value.(*leafEntry).cert = cert
		c.lru.MoveToFront(el)
		return
	}
	c.entries[host] = c.lru.PushFront(&leafEntry{host: host, cert: cert})
	for c.lru.Len() > c.size {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.entries, oldest.Value.(*leafEntry).host)
	}
}

func (c *leafCache) report(result string) {
	if c.observe != nil {
		c.observe(result)
	}
}
