// Package jsonscan reads and writes, by hand, the few fixed JSON shapes of
// the ETSI 014 hot path (the gateway's request bodies and answers, the load
// tool's bodies), where encoding/json's reflection was a large part of the
// CPU time. It only understands plain strings (printable ASCII, no
// escapes) and small non-negative integers; a caller that meets anything
// else gives up and leaves the body to encoding/json, so the fast path never
// accepts, refuses or reads a body differently.
package jsonscan

import "strconv"

// Scanner reads JSON tokens from a byte slice.
type Scanner struct {
	b   []byte
	pos int
}

// New returns a scanner at the start of b.
func New(b []byte) *Scanner { return &Scanner{b: b} }

func (s *Scanner) ws() {
	for s.pos < len(s.b) {
		switch s.b[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// Next skips whitespace and consumes c if it comes next.
func (s *Scanner) Next(c byte) bool {
	s.ws()
	if s.pos < len(s.b) && s.b[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

// End reports whether only whitespace is left.
func (s *Scanner) End() bool {
	s.ws()
	return s.pos == len(s.b)
}

// Str reads a string of printable ASCII without escapes and returns its
// bytes, which share the input's.
func (s *Scanner) Str() ([]byte, bool) {
	if !s.Next('"') {
		return nil, false
	}
	start := s.pos
	for s.pos < len(s.b) {
		c := s.b[s.pos]
		if c == '"' {
			v := s.b[start:s.pos]
			s.pos++
			return v, true
		}
		if c == '\\' || c < 0x20 || c >= 0x7f {
			return nil, false
		}
		s.pos++
	}
	return nil, false
}

// Int32 reads a JSON integer 0 ≤ n < 10^9 without sign, fraction or exponent.
func (s *Scanner) Int32() (int32, bool) {
	s.ws()
	start := s.pos
	for s.pos < len(s.b) && s.b[s.pos] >= '0' && s.b[s.pos] <= '9' {
		s.pos++
	}
	digits := s.b[start:s.pos]
	if len(digits) == 0 || len(digits) > 9 || (len(digits) > 1 && digits[0] == '0') {
		return 0, false
	}
	if s.pos < len(s.b) {
		switch s.b[s.pos] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	n, err := strconv.ParseInt(string(digits), 10, 32)
	return int32(n), err == nil
}

// PlainString reports whether s can be written between quotes as it is:
// printable ASCII other than the quote and the backslash (encoding/json
// would also escape <, > and &, which means the same to a JSON reader).
func PlainString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
