package qkd015

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/openconfig/goyang/pkg/yang"
	"github.com/openconfig/ygot/util"
)

// A JSON object with its members in document order (duplicates kept, so they
// can be reported).
type object []member

type member struct {
	name  string
	value any
}

// decodeJSON decodes one JSON value: object, []any, string, json.Number,
// bool or nil.
func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err == nil {
		end := dec.InputOffset()
		if _, terr := dec.Token(); terr != io.EOF {
			rest := b[end:]
			line, col := position(b, end+int64(len(rest)-len(bytes.TrimLeft(rest, " \t\r\n"))))
			return nil, fmt.Errorf("malformed JSON at line %d, column %d: data after the document", line, col)
		}
	}
	if err != nil {
		off := dec.InputOffset()
		var se *json.SyntaxError
		if errors.As(err, &se) {
			off = se.Offset
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = errors.New("unexpected end of input")
		}
		line, col := position(b, off)
		return nil, fmt.Errorf("malformed JSON at line %d, column %d: %v", line, col, err)
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (any, error) {
	t, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := t.(json.Delim)
	if !ok {
		return t, nil
	}
	switch d {
	case '{':
		o := object{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			k, ok := kt.(string)
			if !ok {
				return nil, fmt.Errorf("object key %v is not a string", kt)
			}
			v, err := decodeValue(dec)
			if err != nil {
				return nil, err
			}
			o = append(o, member{k, v})
		}
		if _, err := dec.Token(); err != nil {
			return nil, err
		}
		return o, nil
	case '[':
		a := []any{}
		for dec.More() {
			v, err := decodeValue(dec)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
		}
		if _, err := dec.Token(); err != nil {
			return nil, err
		}
		return a, nil
	}
	return nil, fmt.Errorf("unexpected %q", d)
}

// position turns a byte offset into a 1-based line and column.
func position(b []byte, off int64) (line, col int) {
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	before := b[:off]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(off) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

// describe names a decoded JSON value in a message.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return strconv.FormatBool(v)
	case string:
		return "string " + strconv.Quote(v)
	case json.Number:
		return "number " + v.String()
	case object:
		return "an object"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}

// checker checks a decoded JSON_IETF document against the schema before ygot
// sees it: ygot accepts some documents RFC 7951 and the model do not allow
// (see the package documentation) and names problems by struct, not path.
type checker struct {
	problems
}

// container checks the members of an object whose schema is the generated
// struct type t; module is the object's own module.
func (c *checker) container(t reflect.Type, v any, path, module string) {
	o, ok := v.(object)
	if !ok {
		c.addf(path, "got %s, want an object", describe(v))
		return
	}
	si := infoOf(t)
	seen := map[string]bool{}
	for _, m := range o {
		mod, name, qualified := strings.Cut(m.name, ":")
		if !qualified {
			mod, name = "", m.name
		}
		f := si.byName[name]
		switch {
		case f == nil:
			c.addf(path+"/"+m.name, "unknown field")
			continue
		case qualified && mod != f.module:
			c.addf(path+"/"+m.name, "unknown field (%s is in module %s)", name, f.module)
			continue
		case !qualified && f.module != module:
			c.addf(path+"/"+name, "must be written %q: RFC 7951 qualifies a member whose module differs from its parent's", f.module+":"+name)
			continue
		}
		p := path + "/" + name
		if seen[name] {
			c.addf(p, "duplicate member")
			continue
		}
		seen[name] = true
		c.node(f, m.value, p)
	}
}

func (c *checker) node(f *field, v any, path string) {
	switch e := f.entry; {
	case e.IsList():
		c.list(f, v, path)
	case e.IsLeafList():
		a, ok := v.([]any)
		if !ok {
			c.addf(path, "got %s, want an array (leaf-list of %s)", describe(v), typeName(e))
			return
		}
		for _, x := range a {
			c.leaf(f, x, path)
		}
	case e.IsLeaf():
		c.leaf(f, v, path)
	case e.IsContainer():
		c.container(f.typ.Elem(), v, path, f.module)
	}
}

func (c *checker) list(f *field, v any, path string) {
	a, ok := v.([]any)
	if !ok {
		c.addf(path, "got %s, want an array of list entries", describe(v))
		return
	}
	elemT := f.typ.Elem().Elem() // map[K]*T -> T
	keys := strings.Fields(f.entry.Key)
	seen := map[string]int{}
	for i, x := range a {
		ep := fmt.Sprintf("%s[%d]", path, i+1)
		o, ok := x.(object)
		if !ok {
			c.addf(ep, "got %s, want an object (list entry)", describe(x))
			continue
		}
		var preds, missing []string
		for _, k := range keys {
			kv, found := o.get(k)
			if !found {
				missing = append(missing, k)
				continue
			}
			preds = append(preds, "["+k+"="+keyText(kv)+"]")
		}
		switch {
		case len(missing) > 0:
			c.addf(ep, "missing list key %s", strings.Join(missing, ", "))
		default:
			kp := path + strings.Join(preds, "")
			if j, dup := seen[kp]; dup {
				c.addf(kp, "duplicate list entry (entries %d and %d have the same key)", j, i+1)
			} else {
				seen[kp] = i + 1
			}
			ep = kp
		}
		c.container(elemT, o, ep, f.module)
	}
}

// get returns the member named name, with or without a module prefix.
func (o object) get(name string) (any, bool) {
	for _, m := range o {
		if m.name == name || strings.HasSuffix(m.name, ":"+name) {
			return m.value, true
		}
	}
	return nil, false
}

// keyText writes a key value into a path predicate.
func keyText(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	}
	return describe(v)
}

// leaf checks one value of a leaf or leaf-list against RFC 7951's encoding of
// its YANG type; the type's own restrictions (patterns, ranges) are checked
// by Validate after unmarshalling.
func (c *checker) leaf(f *field, v any, path string) {
	t := f.entry.Type
	if t == nil {
		return
	}
	want := func(what string) {
		c.addf(path, "got %s, want %s (%s)", describe(v), what, typeName(f.entry))
	}
	wantString := func(why string) {
		c.addf(path, "got %s, want a string (%s: RFC 7951 writes %s as strings)", describe(v), typeName(f.entry), why)
	}
	switch t.Kind {
	case yang.Ystring:
		str, ok := v.(string)
		if !ok {
			want("a string")
			return
		}
		for _, re := range patternsOf(t) {
			if !re.MatchString(str) {
				c.addf(path, "%q does not match the %s pattern", str, typeName(f.entry))
				break
			}
		}
	case yang.Ybool:
		if _, ok := v.(bool); !ok {
			want("true or false")
		}
	case yang.Yint8, yang.Yint16, yang.Yint32, yang.Yuint8, yang.Yuint16, yang.Yuint32:
		n, ok := v.(json.Number)
		if !ok {
			want("a number")
			return
		}
		c.integer(t.Kind, n.String(), path)
	case yang.Yint64, yang.Yuint64:
		s, ok := v.(string)
		if !ok {
			wantString("64-bit integers")
			return
		}
		c.integer(t.Kind, s, path)
	case yang.Ydecimal64:
		s, ok := v.(string)
		if !ok {
			wantString("decimal64 values")
			return
		}
		c.decimal(s, int(t.FractionDigits), path)
	case yang.Yenum, yang.Yidentityref:
		s, ok := v.(string)
		if !ok {
			want("a string")
			return
		}
		c.enum(f, s, path)
	case yang.Yempty:
		if a, ok := v.([]any); !ok || len(a) != 1 || a[0] != nil {
			want("[null]")
		}
	case yang.Ybinary:
		s, ok := v.(string)
		if !ok {
			want("a base64 string")
			return
		}
		if _, err := base64.StdEncoding.DecodeString(s); err != nil {
			c.addf(path, "%q is not base64", s)
		}
	}
	// Unions, bits and leafrefs are left to ytypes; the model has none.
}

var bitSize = map[yang.TypeKind]int{
	yang.Yint8: 8, yang.Yint16: 16, yang.Yint32: 32, yang.Yint64: 64,
	yang.Yuint8: 8, yang.Yuint16: 16, yang.Yuint32: 32, yang.Yuint64: 64,
}

func (c *checker) integer(k yang.TypeKind, s, path string) {
	kind := yang.TypeKindToName[k]
	var err error
	switch k {
	case yang.Yuint8, yang.Yuint16, yang.Yuint32, yang.Yuint64:
		_, err = strconv.ParseUint(s, 10, bitSize[k])
		if _, ierr := strconv.ParseInt(s, 10, 64); err != nil && ierr == nil {
			err = strconv.ErrRange // negative
		}
	default:
		_, err = strconv.ParseInt(s, 10, bitSize[k])
	}
	if err == nil {
		return
	}
	if errors.Is(err, strconv.ErrRange) {
		c.addf(path, "%s is out of range for %s", s, kind)
		return
	}
	c.addf(path, "%s is not an integer (%s)", s, kind)
}

var decimalRE = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`)

func (c *checker) decimal(s string, digits int, path string) {
	if !decimalRE.MatchString(s) {
		c.addf(path, "%q is not a decimal number", s)
		return
	}
	ip, frac, _ := strings.Cut(strings.TrimPrefix(s, "-"), ".")
	if digits <= 0 {
		return // no fraction-digits in the schema; leave it to ytypes
	}
	if len(frac) > digits {
		c.addf(path, "%s has more than %d fraction digits", s, digits)
		return
	}
	// decimal64 is an int64 scaled by 10^-digits.
	if _, err := strconv.ParseInt(ip+frac+strings.Repeat("0", digits-len(frac)), 10, 64); err != nil {
		c.addf(path, "%s is out of range for decimal64 with %d fraction digits", s, digits)
	}
}

// enum checks an enumeration or identity name against the values of the
// leaf's Go type (for an identityref: the identities derived from its base).
func (c *checker) enum(f *field, s, path string) {
	defs := enumDefs(scalarType(f.typ))
	if defs == nil {
		return // not a generated enumerated type; leave it to ytypes
	}
	mod, name, qualified := strings.Cut(s, ":")
	if !qualified {
		mod, name = "", s
	}
	var names []string
	for _, d := range sortedDefs(defs) {
		if d.Name == name && (!qualified || mod == d.DefiningModule) {
			return
		}
		if d.DefiningModule != "" {
			names = append(names, d.DefiningModule+":"+d.Name)
		} else {
			names = append(names, d.Name)
		}
	}
	kind := "value"
	if f.entry.Type.Kind == yang.Yidentityref {
		kind = "identity"
	}
	c.addf(path, "%q is not a %s %s (want %s)", s, typeName(f.entry), kind, orList(names))
}

func orList(names []string) string {
	switch len(names) {
	case 0:
		return "nothing"
	case 1:
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// patterns caches the compiled patterns of string types, by type.
var patterns sync.Map // *yang.YangType -> []*regexp.Regexp

// patternsOf returns the type's patterns as Go regular expressions, as ygot
// turns them (anchored W3C patterns); one that does not compile is left to
// ygot's validation.
func patternsOf(t *yang.YangType) []*regexp.Regexp {
	if v, ok := patterns.Load(t); ok {
		return v.([]*regexp.Regexp)
	}
	var out []*regexp.Regexp
	pats, _ := util.SanitizedPattern(t)
	for _, p := range pats {
		if re, err := regexp.Compile(p); err == nil {
			out = append(out, re)
		}
	}
	patterns.Store(t, out)
	return out
}
