package h1

import (
	"bytes"
	"strconv"
	"unsafe"

	"golang.org/x/net/http/httpguts"
)

// HeadEnd finds the empty line that ends a message head in b, looking at
// the lines that start at from or later. It returns the length of the
// head with that line, or -1 and the start of the incomplete last line.
// A line may end with LF alone, as RFC 9112, section 2.2 lets a
// recipient accept.
func HeadEnd(b []byte, from int) (end, lineStart int) {
	for {
		i := bytes.IndexByte(b[from:], '\n')
		if i < 0 {
			return -1, from
		}
		if i == 0 || (i == 1 && b[from] == '\r') {
			return from + i + 1, 0
		}
		from += i + 1
	}
}

// CutLine returns the first line of b, without its CR LF (or LF), and
// the rest.
func CutLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return TrimCR(b), nil
	}
	return TrimCR(b[:i]), b[i+1:]
}

// TrimCR removes one carriage return at the end of a line.
func TrimCR(line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\r' {
		return line[:n-1]
	}
	return line
}

// TrimOWS trims the spaces and tabs around a field value (RFC 9110,
// section 5.6.3).
func TrimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// EqualFold reports whether b and s are equal without regard to the case
// of ASCII letters (field names and tokens are ASCII).
func EqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// EqualFoldAny reports whether b equals one of list, without regard to
// ASCII case.
func EqualFoldAny(b []byte, list []string) bool {
	for _, s := range list {
		if EqualFold(b, s) {
			return true
		}
	}
	return false
}

// ParseLength parses a Content-Length value as net/http does: decimal
// digits only, no sign, at most 2^63-1.
func ParseLength(v []byte) (int64, bool) {
	if len(v) == 0 || v[0] < '0' || v[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseUint(view(v), 10, 63)
	if err != nil {
		return 0, false
	}
	return int64(n), true
}

// ValidFieldName reports whether name is a token (RFC 9110, section
// 5.6.2), which a field name and a method are.
func ValidFieldName(name []byte) bool {
	return httpguts.ValidHeaderFieldName(view(name))
}

// ValidFieldValue reports whether v may be a field value: no control
// character other than a tab, so no CR or LF.
func ValidFieldValue(v []byte) bool {
	return httpguts.ValidHeaderFieldValue(view(v))
}

// view is b as a string, without a copy, for checks that neither keep
// the string nor run while b changes.
func view(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// SplitField splits a field line, without its line end, into its name
// and its value with the whitespace around it trimmed. It reports false
// for a line that is not a valid field: no colon, a name that is not a
// token (a space before the colon included), or a value with a control
// character.
func SplitField(line []byte) (name, value []byte, ok bool) {
	colon := bytes.IndexByte(line, ':')
	if colon < 1 {
		return nil, nil, false
	}
	name, value = line[:colon], line[colon+1:]
	if !ValidFieldName(name) || !ValidFieldValue(value) {
		return nil, nil, false
	}
	return name, TrimOWS(value), true
}

// EachField calls f with the name and trimmed value of each line of a
// block of field lines, each ended by CR LF. It reports false, stopping,
// when a line does not end with CR LF or is not a valid field (see
// SplitField), there are more than max, or f returns false.
func EachField(block []byte, max int, f func(name, value []byte) bool) bool {
	for fields := 0; len(block) > 0; fields++ {
		i := bytes.IndexByte(block, '\n')
		if i < 1 || block[i-1] != '\r' || fields == max {
			return false
		}
		name, value, ok := SplitField(block[:i-1])
		block = block[i+1:]
		if !ok || !f(name, value) {
			return false
		}
	}
	return true
}

// FieldValues calls f with the value of each line of a message head
// (after its start line) whose name is name, compared without regard to
// case. Lines that are not fields are skipped: this reads heads that a
// parser has accepted or will judge.
func FieldValues(head []byte, name string, f func(value []byte)) {
	_, rest := CutLine(head) // the start line
	for len(rest) > 0 {
		var line []byte
		line, rest = CutLine(rest)
		n, v, ok := bytes.Cut(line, []byte(":"))
		if ok && EqualFold(n, name) {
			f(TrimOWS(v))
		}
	}
}

// RequestLine splits a request line, without its line end, into its
// method, request-target and protocol version. It reports false unless
// the line has exactly three parts separated by single spaces.
func RequestLine(line []byte) (method, target, proto []byte, ok bool) {
	method, rest, ok1 := bytes.Cut(line, []byte(" "))
	target, proto, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || bytes.IndexByte(proto, ' ') >= 0 {
		return nil, nil, nil, false
	}
	return method, target, proto, true
}

// StatusLine reads the version and status code of the status line at the
// start of b ("HTTP/1.1 200 OK"). It reports false if b does not start
// with one.
func StatusLine(b []byte) (proto []byte, code int, ok bool) {
	if len(b) < 12 || string(b[:5]) != "HTTP/" || b[8] != ' ' {
		return nil, 0, false
	}
	if len(b) > 12 && b[12] != ' ' && b[12] != '\r' && b[12] != '\n' {
		return nil, 0, false
	}
	for _, d := range b[9:12] {
		if d < '0' || d > '9' {
			return nil, 0, false
		}
		code = code*10 + int(d-'0')
	}
	return b[:8], code, true
}

// Interim reports whether an answer with status code is informational
// and followed by another answer: 1xx other than 101.
func Interim(code int) bool {
	return code >= 100 && code < 200 && code != 101
}
