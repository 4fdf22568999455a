package h1

import "testing"

// BenchmarkFramingScan measures the framing checks on a typical API
// request head, as one read delivers it.
func BenchmarkFramingScan(b *testing.B) {
	head := []byte("GET /2/0/workspaces/8a81b09d5e8c6f27015ece3402487d33/models HTTP/1.1\r\n" +
		"Host: api.anaplan.com\r\n" +
		"User-Agent: curl/7.88.1\r\n" +
		"Accept: application/json\r\n" +
		"Content-Type: application/json\r\n" +
		"X-Request-Id: 5f0c7a1e-43d2-4b8e-9a51-2c7e0d9b6f13\r\n" +
		"\r\n")
	c := &guardConn{maxHead: 64 << 10}
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	for b.Loop() {
		if a, _ := c.scan(head); a != nil {
			b.Fatal(a.Message)
		}
	}
}
