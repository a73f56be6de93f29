package qkd015

import (
	"cmp"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/openconfig/goyang/pkg/yang"
	"github.com/openconfig/ygot/ytypes"
)

// walker validates a Go tree node by node, so that each problem carries the
// data path with list keys (ygot's own Validate names schema nodes only).
// Leaf values are checked by ytypes against the leaf's schema.
type walker struct {
	problems
}

// container validates the struct v points to (not nil).
func (w *walker) container(v reflect.Value, path string) {
	si := infoOf(v.Elem().Type())
	for _, f := range si.fields {
		fv := v.Elem().Field(f.index)
		p := path + "/" + f.name
		switch e := f.entry; {
		case e.IsList():
			w.list(f, fv, p)
		case e.IsLeafList():
			w.leafList(f, fv, p)
		case e.IsLeaf():
			if unset(fv) {
				if e.Mandatory == yang.TSTrue {
					w.addf(p, "mandatory leaf is missing")
				}
				continue
			}
			w.value(e, fv, p)
		case e.IsContainer():
			if !fv.IsNil() {
				w.container(fv, p)
			}
		}
	}
}

// unset reports whether a leaf field holds no value.
func unset(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Ptr, reflect.Interface, reflect.Map:
		return v.IsNil()
	case reflect.Slice:
		return v.Len() == 0
	case reflect.Int64:
		return v.Int() == 0 // the UNSET value of a generated enumerated type
	}
	return v.IsZero()
}

// value validates one value of leaf e: a pointer to the value, or an
// enumerated value.
func (w *walker) value(e *yang.Entry, v reflect.Value, path string) {
	if defs := enumDefs(v.Type()); defs != nil {
		if _, ok := defs[v.Int()]; !ok {
			w.addf(path, "%d is not a %s value", v.Int(), typeName(e))
		}
		return
	}
	if e.Type.Kind == yang.Ydecimal64 && v.Kind() == reflect.Ptr && v.Elem().Kind() == reflect.Float64 {
		if msg := checkDecimal(v.Elem().Float(), int(e.Type.FractionDigits)); msg != "" {
			w.addf(path, "%s", msg)
			return
		}
	}
	for _, err := range ytypes.Validate(e, v.Interface()) {
		w.addf(path, "%s", tidyLeaf(e, err.Error()))
	}
}

// checkDecimal reports why the float64 x is not a decimal64 value with the
// given fraction digits (ytypes checks only ranges), or "".
func checkDecimal(x float64, digits int) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return fmt.Sprintf("%v is not a decimal64 value", x)
	}
	if digits <= 0 {
		return ""
	}
	s := strconv.FormatFloat(x, 'f', -1, 64)
	ip, frac, _ := strings.Cut(strings.TrimPrefix(s, "-"), ".")
	if len(frac) > digits {
		return fmt.Sprintf("%s has more than %d fraction digits (round it, e.g. with qkd015.Decimal64)", s, digits)
	}
	if _, err := strconv.ParseInt(ip+frac+strings.Repeat("0", digits-len(frac)), 10, 64); err != nil {
		return fmt.Sprintf("%s is out of range for decimal64 with %d fraction digits", s, digits)
	}
	return ""
}

func (w *walker) leafList(f *field, v reflect.Value, path string) {
	seen := map[any]bool{}
	config := !f.entry.ReadOnly()
	for i := 0; i < v.Len(); i++ {
		x := v.Index(i)
		if x.Type().Comparable() {
			if seen[x.Interface()] && config {
				w.addf(path, "duplicate value %s", valueText(x))
				continue
			}
			seen[x.Interface()] = true
		}
		arg := x
		if x.Kind() != reflect.Int64 {
			arg = reflect.New(x.Type()) // ytypes takes a leaf's value by pointer
			arg.Elem().Set(x)
		}
		w.value(f.elem, arg, path)
	}
}

func valueText(v reflect.Value) string {
	if v.Kind() == reflect.String {
		return fmt.Sprintf("%q", v.String())
	}
	return fmt.Sprint(v.Interface())
}

func (w *walker) list(f *field, v reflect.Value, path string) {
	keys := strings.Fields(f.entry.Key)
	elem := infoOf(f.typ.Elem().Elem())
	for _, k := range sortedKeys(v) {
		ev := v.MapIndex(k)
		ep := path + predicate(keys, k)
		if ev.IsNil() {
			w.addf(ep, "nil list entry")
			continue
		}
		if len(keys) == 1 {
			kf := elem.byName[keys[0]]
			kv := ev.Elem().Field(kf.index)
			switch {
			case unset(kv):
				w.addf(ep+"/"+keys[0], "list key is missing")
			case reflect.Indirect(kv).Interface() != k.Interface():
				w.addf(ep+"/"+keys[0], "%s differs from the key the entry is stored under", valueText(reflect.Indirect(kv)))
			}
		}
		w.container(ev, ep)
	}
}

// predicate writes a list entry's keys as "[k=v]" ("[k1=v1][k2=v2]" for a
// struct key, whose fields carry the keys' path tags).
func predicate(keys []string, k reflect.Value) string {
	if k.Kind() != reflect.Struct {
		return "[" + keys[0] + "=" + fmt.Sprint(k.Interface()) + "]"
	}
	var b strings.Builder
	for _, name := range keys {
		for i := 0; i < k.NumField(); i++ {
			if k.Type().Field(i).Tag.Get("path") == name {
				fmt.Fprintf(&b, "[%s=%v]", name, k.Field(i).Interface())
			}
		}
	}
	return b.String()
}

// sortedKeys returns a map's keys in a fixed order.
func sortedKeys(m reflect.Value) []reflect.Value {
	ks := m.MapKeys()
	slices.SortFunc(ks, compareValues)
	return ks
}

func compareValues(a, b reflect.Value) int {
	switch a.Kind() {
	case reflect.String:
		return cmp.Compare(a.String(), b.String())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return cmp.Compare(a.Int(), b.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return cmp.Compare(a.Uint(), b.Uint())
	case reflect.Float32, reflect.Float64:
		return cmp.Compare(a.Float(), b.Float())
	case reflect.Bool:
		return cmp.Compare(fmt.Sprint(a.Bool()), fmt.Sprint(b.Bool()))
	case reflect.Struct:
		for i := 0; i < a.NumField(); i++ {
			if c := compareValues(a.Field(i), b.Field(i)); c != 0 {
				return c
			}
		}
		return 0
	}
	return cmp.Compare(fmt.Sprint(a.Interface()), fmt.Sprint(b.Interface()))
}

var (
	schemaPrefix = regexp.MustCompile(`^schema "[^"]*": `)
	patternMsg   = regexp.MustCompile(`^(".*") does not match regular expression pattern ".*"$`)
	rangeMsg     = regexp.MustCompile(`^(?:signed integer|unsigned integer|decimal) value (\S+) is outside specified ranges$`)
	lengthMsg    = regexp.MustCompile(`^length (\d+) is outside range .*$`)
)

// tidyLeaf rewrites a ytypes leaf validation message for a reader who knows
// the YANG model rather than ygot's internals.
func tidyLeaf(e *yang.Entry, msg string) string {
	msg = schemaPrefix.ReplaceAllString(msg, "")
	if m := patternMsg.FindStringSubmatch(msg); m != nil {
		if !isBuiltin(e) {
			return m[1] + " does not match the " + typeName(e) + " pattern"
		}
		return m[1] + " does not match the pattern " + strings.Join(quoteAll(e.Type.Pattern), " and ")
	}
	if m := rangeMsg.FindStringSubmatch(msg); m != nil {
		return m[1] + " is outside the range " + e.Type.Range.String() + " of " + typeName(e)
	}
	if m := lengthMsg.FindStringSubmatch(msg); m != nil {
		return "length " + m[1] + " is outside the lengths " + e.Type.Length.String() + " of " + typeName(e)
	}
	return msg
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// ygotPath matches the schema paths ygot puts before its messages, e.g.
// "/device/qkd_node/qkd_links: ".
var ygotPath = regexp.MustCompile(`(/[^\s:/]+)+: `)

// tidyYgot turns one error of ygot's whole-tree validation into a Problem,
// keeping the innermost path ygot names.
func tidyYgot(msg string) Problem {
	locs := ygotPath.FindAllStringIndex(msg, -1)
	if len(locs) == 0 {
		return Problem{Path: nodeName, Message: schemaPrefix.ReplaceAllString(msg, "")}
	}
	last := locs[len(locs)-1]
	path := strings.TrimSuffix(msg[last[0]:last[1]], ": ")
	path = strings.TrimPrefix(strings.TrimPrefix(path, "/device"), "/")
	return Problem{Path: path, Message: schemaPrefix.ReplaceAllString(msg[last[1]:], "")}
}
