package qkd015

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a document or tree.
type Problem struct {
	// Path is the data node, module names left out and list entries named by
	// their keys: "qkd_node/qkd_links/qkd_link[qkdl_id=…]/qkdl_type". A list
	// entry without its key is named by position from 1: "qkd_link[2]". Empty
	// for problems with the document as a whole (malformed JSON).
	Path string
	// Message says what is wrong, e.g. `"xyz" does not match the uuid pattern`.
	Message string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// Error is the error Parse, Validate and Marshal return for invalid documents
// and trees. Its text is one "path: problem" per problem, joined with "; ".
type Error struct {
	Problems []Problem
}

// maxShown bounds the problems Error's text lists; all stay in Problems.
const maxShown = 20

func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i == maxShown {
			fmt.Fprintf(&b, "; and %d more", len(e.Problems)-maxShown)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// problems collects Problems.
type problems []Problem

func (ps *problems) addf(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (ps problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	return &Error{Problems: ps}
}

func oneProblem(path, format string, args ...any) error {
	var ps problems
	ps.addf(path, format, args...)
	return ps.err()
}
