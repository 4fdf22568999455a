package h1

import (
	"net/http"
	"net/textproto"
	"strings"
)

// hopByHop are the hop-by-hop fields of RFC 9110, section 7.6.1, and the
// proxy ones of the same kind: they describe one connection and are
// never passed on, in either direction.
var hopByHop = [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// IsHopByHop reports whether the canonical field name is hop-by-hop.
func IsHopByHop(name string) bool {
	for _, h := range hopByHop {
		if name == h {
			return true
		}
	}
	return false
}

// IsHopByHopName reports whether a field name as it came on the wire, in
// any case, is hop-by-hop.
func IsHopByHopName(name []byte) bool {
	return EqualFoldAny(name, hopByHop[:])
}

// RemoveHopByHop deletes the hop-by-hop fields from h, and those that its
// Connection field names.
func RemoveHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for name := range strings.SplitSeq(f, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		delete(h, name)
	}
}
