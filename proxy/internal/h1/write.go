package h1

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// FieldError is a field that a head writer left out because it would
// break the framing (see the package comment). The value is not named:
// it may be a credential.
type FieldError struct {
	Name string
}

func (e *FieldError) Error() string {
	if !httpguts.ValidHeaderFieldName(e.Name) {
		return fmt.Sprintf("invalid field name %q", e.Name)
	}
	return fmt.Sprintf("invalid value of field %s", e.Name)
}

// WriteField writes the lines of one field, one per value. A name that is
// not a token leaves the field out, a value that is not a valid field
// value leaves that line out; either is reported as a *FieldError.
func WriteField(bw *bufio.Writer, name string, values []string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return &FieldError{Name: name}
	}
	var err error
	for _, v := range values {
		if !httpguts.ValidHeaderFieldValue(v) {
			err = &FieldError{Name: name}
			continue
		}
		_, _ = bw.WriteString(name)
		_, _ = bw.WriteString(": ")
		_, _ = bw.WriteString(v)
		_, _ = bw.WriteString("\r\n")
	}
	return err
}

// WriteFields writes the fields of h, but those for which skip (if not
// nil) reports true, by WriteField. It writes every valid field and
// reports the first it left out.
func WriteFields(bw *bufio.Writer, h http.Header, skip func(name string) bool) error {
	var first error
	for k, vv := range h {
		if skip != nil && skip(k) {
			continue
		}
		if err := WriteField(bw, k, vv); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// CopyFields writes the field lines of block, each ended by CR LF, as
// they are, but those for which skip reports true. The block must have
// passed EachField: its lines are not checked again.
func CopyFields(bw *bufio.Writer, block []byte, skip func(name []byte) bool) {
	for len(block) > 0 {
		i := strings.IndexByte(view(block), '\n')
		line := block[:i+1]
		block = block[i+1:]
		colon := strings.IndexByte(view(line), ':')
		if colon > 0 && skip(line[:colon]) {
			continue
		}
		_, _ = bw.Write(line)
	}
}

// WriteRequestLine writes a request line of HTTP/1.1.
func WriteRequestLine(bw *bufio.Writer, method string, target []byte) {
	_, _ = bw.WriteString(method)
	_ = bw.WriteByte(' ')
	_, _ = bw.Write(target)
	_, _ = bw.WriteString(" HTTP/1.1\r\n")
}

// WriteRequestHead writes the head of req as (*http.Request).Write
// would, without its allocations, for HTTP/1.1: the request line, Host
// (req.Host), the framing of the body, then the fields of req.Header but
// those that framing and Host set. A body's known length goes in
// Content-Length, and one not known makes it chunked; as net/http does,
// a POST, PUT or PATCH without a body says Content-Length: 0, and an
// empty User-Agent sends none. A method that is not a token, or a field
// left out (see WriteField), fails the head: it must not be sent.
func WriteRequestHead(bw *bufio.Writer, req *http.Request) error {
	if !httpguts.ValidHeaderFieldName(req.Method) {
		return fmt.Errorf("invalid method %q", req.Method)
	}
	if !httpguts.ValidHostHeader(req.Host) {
		return fmt.Errorf("invalid Host %q", req.Host)
	}
	length := int64(-1)
	chunked := false
	if req.Body != nil && req.Body != http.NoBody {
		length = req.ContentLength
		chunked = length < 0
	} else {
		switch req.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			length = 0
		}
	}
	_, _ = bw.WriteString(req.Method)
	_ = bw.WriteByte(' ')
	if req.URL.Opaque != "" || req.URL.Path == "*" && req.Method == http.MethodOptions {
		_, _ = bw.WriteString(req.URL.RequestURI())
	} else {
		path := req.URL.EscapedPath()
		if path == "" {
			path = "/"
		}
		_, _ = bw.WriteString(path)
		if req.URL.ForceQuery || req.URL.RawQuery != "" {
			_ = bw.WriteByte('?')
			_, _ = bw.WriteString(req.URL.RawQuery)
		}
	}
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(req.Host)
	_, _ = bw.WriteString("\r\n")
	if chunked {
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	} else if length >= 0 {
		_, _ = bw.WriteString("Content-Length: ")
		_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), length, 10))
		_, _ = bw.WriteString("\r\n")
	}
	for k, vv := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		case "User-Agent":
			if len(vv) == 0 || vv[0] == "" {
				continue
			}
			vv = vv[:1]
		}
		if err := WriteField(bw, k, vv); err != nil {
			return err
		}
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// WriteStatusLine writes the status line of an answer with code, for an
// HTTP/1.1 request if proto11, else HTTP/1.0.
func WriteStatusLine(bw *bufio.Writer, proto11 bool, code int) {
	if proto11 {
		_, _ = bw.WriteString("HTTP/1.1 ")
	} else {
		_, _ = bw.WriteString("HTTP/1.0 ")
	}
	_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(http.StatusText(code))
	_, _ = bw.WriteString("\r\n")
}

// WriteResponseHead writes the head of an answer: the status line, the
// fields of h but trailer fields set ahead (http.TrailerPrefix), and
// Transfer-Encoding: chunked if chunked, then the empty line. Fields
// left out (see WriteField) are reported; the head goes without them.
func WriteResponseHead(bw *bufio.Writer, proto11 bool, code int, h http.Header, chunked bool) error {
	WriteStatusLine(bw, proto11, code)
	err := WriteFields(bw, h, isTrailerPrefixed)
	if chunked {
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	_, _ = bw.WriteString("\r\n")
	return err
}

func isTrailerPrefixed(name string) bool {
	return strings.HasPrefix(name, http.TrailerPrefix)
}

// WriteContinue writes the interim answer 100 Continue, which tells a
// client that waits for it to send its request body.
func WriteContinue(w io.Writer) error {
	_, err := io.WriteString(w, "HTTP/1.1 100 Continue\r\n\r\n")
	return err
}
