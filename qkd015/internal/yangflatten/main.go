// Command yangflatten rewrites a YANG module so that goyang (and therefore the
// ygot generator) sees every node the module defines.
//
// goyang silently ignores an "augment" statement nested in a "uses" statement
// (https://github.com/openconfig/ygot/issues/605). ETSI GS QKD 015 uses one:
//
//	grouping augmented_app_qos {
//	  uses app_qos {
//	    augment app_qos { leaf clients_shared_path_enable {...} leaf clients_shared_keys_required {...} }
//	  }
//	}
//
// so without this step the generated Go code has no clients_shared_* leaves in
// app_qos and Parse would reject valid ETSI documents that carry them.
//
// yangflatten replaces each such "uses" by the grouping's body with the
// augment's nodes added at the augment's target, which is what RFC 7950
// section 7.13 says the uses statement means. The module keeps its name,
// namespace and prefix, so the data tree (and its JSON encoding) is unchanged.
// Everything it does not know how to inline exactly (refine, when, if-feature,
// foreign groupings, nested typedefs) is an error, never a silent change.
//
// The output is the parsed module written back in a canonical layout (comments
// are dropped), deterministic for a given input.
//
// Usage: go run ./qkd015/internal/yangflatten -o OUT.yang IN.yang
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/openconfig/goyang/pkg/yang"
)

type stmt struct {
	kw     string
	arg    string
	hasArg bool
	subs   []*stmt
}

func convert(s *yang.Statement) *stmt {
	n := &stmt{kw: s.Keyword, arg: s.Argument, hasArg: s.HasArgument}
	for _, c := range s.SubStatements() {
		n.subs = append(n.subs, convert(c))
	}
	return n
}

func (s *stmt) clone() *stmt {
	n := &stmt{kw: s.kw, arg: s.arg, hasArg: s.hasArg}
	for _, c := range s.subs {
		n.subs = append(n.subs, c.clone())
	}
	return n
}

// flattener inlines uses statements that carry augments.
type flattener struct {
	prefix    string           // the module's own prefix
	groupings map[string]*stmt // top-level groupings by name
	inlined   int
}

// localName strips the module's own prefix from an identifier; a foreign
// prefix is an error.
func (f *flattener) localName(id string) (string, error) {
	p, name, ok := strings.Cut(id, ":")
	if !ok {
		return id, nil
	}
	if p != f.prefix {
		return "", fmt.Errorf("%q refers to another module (prefix %q)", id, p)
	}
	return name, nil
}

var dataDefs = map[string]bool{
	"container": true, "leaf": true, "leaf-list": true, "list": true,
	"choice": true, "case": true, "anydata": true, "anyxml": true,
	"uses": true, "action": true, "notification": true,
}

// walk rewrites the substatements of s in place.
func (f *flattener) walk(s *stmt) error {
	var out []*stmt
	for _, c := range s.subs {
		if c.kw == "uses" && hasSub(c, "augment") {
			body, err := f.expand(c)
			if err != nil {
				return fmt.Errorf("uses %s: %w", c.arg, err)
			}
			f.inlined++
			// The expansion may itself hold uses with augments.
			tmp := &stmt{subs: body}
			if err := f.walk(tmp); err != nil {
				return err
			}
			out = append(out, tmp.subs...)
			continue
		}
		if err := f.walk(c); err != nil {
			return err
		}
		out = append(out, c)
	}
	s.subs = out
	return nil
}

func hasSub(s *stmt, kw string) bool {
	for _, c := range s.subs {
		if c.kw == kw {
			return true
		}
	}
	return false
}

// expand returns the data definitions uses stands for, augments applied.
func (f *flattener) expand(uses *stmt) ([]*stmt, error) {
	name, err := f.localName(uses.arg)
	if err != nil {
		return nil, err
	}
	g, ok := f.groupings[name]
	if !ok {
		return nil, fmt.Errorf("grouping %q is not a top-level grouping of this module", name)
	}
	var body []*stmt
	for _, c := range g.subs {
		switch {
		case c.kw == "description" || c.kw == "reference" || c.kw == "status":
		case dataDefs[c.kw]:
			body = append(body, c.clone())
		default:
			return nil, fmt.Errorf("grouping %s: cannot inline a %q statement", name, c.kw)
		}
	}
	for _, c := range uses.subs {
		switch c.kw {
		case "description", "reference":
		case "augment":
			if err := f.apply(body, c); err != nil {
				return nil, fmt.Errorf("augment %s: %w", c.arg, err)
			}
		default:
			return nil, fmt.Errorf("cannot inline a uses with a %q statement", c.kw)
		}
	}
	return body, nil
}

// apply adds the augment's nodes to the node its descendant path names in body.
func (f *flattener) apply(body []*stmt, aug *stmt) error {
	var target *stmt
	level := body
	for _, seg := range strings.Split(aug.arg, "/") {
		name, err := f.localName(seg)
		if err != nil {
			return err
		}
		target = nil
		for _, c := range level {
			if c.hasArg && c.arg == name && c.kw != "uses" && dataDefs[c.kw] {
				target = c
				break
			}
		}
		if target == nil {
			return fmt.Errorf("target node %q not found in the grouping", name)
		}
		level = target.subs
	}
	for _, c := range aug.subs {
		switch {
		case c.kw == "description" || c.kw == "reference" || c.kw == "status":
		case dataDefs[c.kw]:
			target.subs = append(target.subs, c.clone())
		default:
			return fmt.Errorf("cannot inline an augment with a %q statement", c.kw)
		}
	}
	return nil
}

// write emits s in a canonical layout: two-space indent, every argument
// double-quoted unless it is a plain token.
func write(b *bytes.Buffer, s *stmt, indent string) {
	b.WriteString(indent)
	b.WriteString(s.kw)
	if s.hasArg {
		b.WriteString(" ")
		b.WriteString(quote(s.arg))
	}
	if len(s.subs) == 0 {
		b.WriteString(";\n")
		return
	}
	b.WriteString(" {\n")
	for _, c := range s.subs {
		write(b, c, indent+"  ")
	}
	b.WriteString(indent)
	b.WriteString("}\n")
}

var bare = regexp.MustCompile(`^[A-Za-z0-9_.:-]+$`)

// quote returns s as a YANG argument: bare when it is a plain token, else a
// double-quoted string.
func quote(s string) string {
	if bare.MatchString(s) {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

func flatten(src []byte, name string) ([]byte, int, error) {
	ss, err := yang.Parse(string(src), name)
	if err != nil {
		return nil, 0, err
	}
	if len(ss) != 1 || ss[0].Keyword != "module" {
		return nil, 0, fmt.Errorf("%s: want exactly one module statement", name)
	}
	mod := convert(ss[0])
	f := &flattener{groupings: map[string]*stmt{}}
	for _, c := range mod.subs {
		switch c.kw {
		case "prefix":
			f.prefix = c.arg
		case "grouping":
			f.groupings[c.arg] = c
		}
	}
	if err := f.walk(mod); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", name, err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "// Code generated by qkd015/internal/yangflatten from %s. DO NOT EDIT.\n", name)
	b.WriteString("// The module as goyang needs it: every uses-with-augment inlined\n")
	b.WriteString("// (https://github.com/openconfig/ygot/issues/605); same data tree.\n")
	write(&b, mod, "")
	return b.Bytes(), f.inlined, nil
}

func main() {
	out := flag.String("o", "", "output file")
	flag.Parse()
	if flag.NArg() != 1 || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: yangflatten -o OUT.yang IN.yang")
		os.Exit(2)
	}
	in := flag.Arg(0)
	src, err := os.ReadFile(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "yangflatten:", err)
		os.Exit(1)
	}
	b, _, err := flatten(src, filepath.ToSlash(in))
	if err != nil {
		fmt.Fprintln(os.Stderr, "yangflatten:", err)
		os.Exit(1)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "yangflatten:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "yangflatten:", err)
		os.Exit(1)
	}
}
