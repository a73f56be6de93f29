package qkd015

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/openconfig/goyang/pkg/yang"
	"github.com/openconfig/ygot/ygot"
)

// A direct JSON_IETF writer for the generated qkd_node structs. It writes
// what ygot.ConstructIETFJSON followed by encoding/json gives (members in
// sorted order, lists sorted by key, empty containers left out, 64-bit
// integers and decimal64 as strings, identities with their module,
// leaf-lists of system order sorted), byte for byte, without building the
// intermediate maps or walking the schema tags for every value: about ten
// times faster, which matters to gNMI Get of a whole network and to the
// pushes of many nodes. A tree holding a kind of value it does not know
// (unions, binary, empty leaves: none in the ETSI 015 model) is left to
// ygot. TestFastEncodeMatchesYgot holds the two to the same bytes.

// errSlowPath means the tree needs ygot's general encoder.
var errSlowPath = errors.New("qkd015: value kind not handled by the direct encoder")

type leafKind int

const (
	kString leafKind = iota
	kBool
	kInt   // 8/16/32-bit integers: JSON numbers
	kInt64 // 64-bit integers: strings (RFC 7951)
	kDecimal
	kEnum
)

// encField is how to write one field of a generated struct.
type encField struct {
	member   string // JSON member name, qualified where the module changes
	index    int
	kind     int // 0 leaf, 1 leaf-list, 2 container, 3 list
	leaf     leafKind
	sorted   bool         // leaf-list in system order: sort its values
	elem     reflect.Type // container or list entry struct type
	module   string       // the field's module (parent module of its children)
	enumDefs map[int64]ygot.EnumDefinition
}

type encPlan struct {
	fields []encField
	err    error
}

var encPlans sync.Map // encKey -> *encPlan

type encKey struct {
	t      reflect.Type
	parent string
}

// planOf returns how to write struct type t (not a pointer) whose parent
// node is in module parent.
func planOf(t reflect.Type, parent string) *encPlan {
	k := encKey{t, parent}
	if v, ok := encPlans.Load(k); ok {
		return v.(*encPlan)
	}
	p := &encPlan{}
	for _, f := range infoOf(t).fields {
		ef := encField{member: f.name, index: f.index, module: f.module}
		if f.module != parent {
			ef.member = f.module + ":" + f.name
		}
		e := f.entry
		switch {
		case e.IsList():
			if f.typ.Kind() != reflect.Map || f.typ.Elem().Kind() != reflect.Ptr {
				p.err = errSlowPath
			} else {
				ef.kind, ef.elem = 3, f.typ.Elem().Elem()
			}
		case e.IsContainer():
			if f.typ.Kind() != reflect.Ptr || f.typ.Elem().Kind() != reflect.Struct {
				p.err = errSlowPath
			} else {
				ef.kind, ef.elem = 2, f.typ.Elem()
			}
		case e.IsLeafList():
			ef.kind = 1
			ef.sorted = !e.ListAttr.OrderedByUser
			if f.typ.Kind() != reflect.Slice {
				p.err = errSlowPath
			}
			ef.leaf, ef.enumDefs = leafKindOf(f.typ.Elem(), e, p)
		default:
			ef.leaf, ef.enumDefs = leafKindOf(f.typ, e, p)
		}
		p.fields = append(p.fields, ef)
	}
	slices.SortFunc(p.fields, func(a, b encField) int { return strings.Compare(a.member, b.member) })
	v, _ := encPlans.LoadOrStore(k, p)
	return v.(*encPlan)
}

// leafKindOf classifies a leaf's Go type t (a pointer for scalars, the
// enumerated type itself for enumerations).
func leafKindOf(t reflect.Type, e *yang.Entry, p *encPlan) (leafKind, map[int64]ygot.EnumDefinition) {
	if defs := enumDefs(t); defs != nil {
		return kEnum, defs
	}
	if t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	if e.Type != nil && e.Type.Kind == yang.Ydecimal64 && t.Kind() == reflect.Float64 {
		return kDecimal, nil
	}
	switch t.Kind() {
	case reflect.String:
		return kString, nil
	case reflect.Bool:
		if t.Name() == "bool" {
			return kBool, nil
		}
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Uint8, reflect.Uint16, reflect.Uint32:
		return kInt, nil
	case reflect.Int64, reflect.Uint64:
		if t.Name() == "int64" || t.Name() == "uint64" {
			return kInt64, nil
		}
	}
	p.err = errSlowPath
	return kString, nil
}

// encodeDirect writes the document {"etsi-qkd-sdn-node:qkd_node": n}.
func encodeDirect(n *Node) ([]byte, error) {
	var w encWriter
	w.buf.Grow(4096)
	w.buf.WriteString(`{"` + topMember + `":`)
	if _, err := w.object(reflect.ValueOf(n).Elem(), nodeModule, true); err != nil {
		return nil, err
	}
	w.buf.WriteByte('}')
	return w.buf.Bytes(), nil
}

type encWriter struct {
	buf     bytes.Buffer
	scratch []byte
}

// object writes struct v as a JSON object and reports whether it had a
// member. An empty object is written as {} only when keep is set (the top
// node and list entries); otherwise nothing is written.
func (w *encWriter) object(v reflect.Value, module string, keep bool) (bool, error) {
	p := planOf(v.Type(), module)
	if p.err != nil {
		return false, p.err
	}
	start := w.buf.Len()
	w.buf.WriteByte('{')
	n := 0
	for i := range p.fields {
		f := &p.fields[i]
		fv := v.Field(f.index)
		mark := w.buf.Len()
		if n > 0 {
			w.buf.WriteByte(',')
		}
		w.str(f.member)
		w.buf.WriteByte(':')
		wrote, err := w.value(f, fv)
		if err != nil {
			return false, err
		}
		if !wrote {
			w.buf.Truncate(mark)
			continue
		}
		n++
	}
	if n == 0 && !keep {
		w.buf.Truncate(start)
		return false, nil
	}
	w.buf.WriteByte('}')
	return true, nil
}

// value writes a field's value and reports whether there was one.
func (w *encWriter) value(f *encField, fv reflect.Value) (bool, error) {
	switch f.kind {
	case 2: // container
		if fv.IsNil() {
			return false, nil
		}
		return w.object(fv.Elem(), f.module, false)
	case 3: // list
		if fv.Len() == 0 {
			return false, nil // ygot leaves empty lists out
		}
		type entry struct {
			k string
			v reflect.Value
		}
		entries := make([]entry, 0, fv.Len())
		for it := fv.MapRange(); it.Next(); {
			ks, err := keyString(it.Key())
			if err != nil {
				return false, err
			}
			entries = append(entries, entry{ks, it.Value()})
		}
		slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.k, b.k) })
		w.buf.WriteByte('[')
		for i, e := range entries {
			if i > 0 {
				w.buf.WriteByte(',')
			}
			if e.v.IsNil() {
				return false, errSlowPath
			}
			if _, err := w.object(e.v.Elem(), f.module, true); err != nil {
				return false, err
			}
		}
		w.buf.WriteByte(']')
		return true, nil
	case 1: // leaf-list
		if fv.Len() == 0 {
			return false, nil // left out, like empty lists
		}
		vals := make([]reflect.Value, fv.Len())
		for i := range vals {
			vals[i] = fv.Index(i)
		}
		if f.sorted && len(vals) > 1 {
			slices.SortStableFunc(vals, func(a, b reflect.Value) int {
				return compareValues(reflect.ValueOf(a.Interface()), reflect.ValueOf(b.Interface()))
			})
		}
		w.buf.WriteByte('[')
		for i, x := range vals {
			if i > 0 {
				w.buf.WriteByte(',')
			}
			ok, err := w.scalar(f, x)
			if err != nil {
				return false, err
			}
			if !ok {
				// An unset enumeration inside a leaf-list: ygot's own
				// rendering of it is not worth copying.
				return false, errSlowPath
			}
		}
		w.buf.WriteByte(']')
		return true, nil
	}
	return w.scalar(f, fv)
}

// scalar writes one leaf value (a pointer, or an enumerated value).
func (w *encWriter) scalar(f *encField, v reflect.Value) (bool, error) {
	if f.leaf == kEnum {
		x := v.Int()
		if x == 0 {
			return false, nil
		}
		def, ok := f.enumDefs[x]
		if !ok {
			return false, fmt.Errorf("qkd015: marshal: %s has unknown value %d", v.Type().Name(), x)
		}
		if def.DefiningModule != "" {
			w.str(def.DefiningModule + ":" + def.Name)
		} else {
			w.str(def.Name)
		}
		return true, nil
	}
	if v.Kind() == reflect.Ptr {
		if v.IsNil() {
			return false, nil
		}
		v = v.Elem()
	}
	b := w.scratch[:0]
	switch f.leaf {
	case kString:
		w.str(v.String())
		return true, nil
	case kBool:
		b = strconv.AppendBool(b, v.Bool())
	case kInt:
		if v.CanInt() {
			b = strconv.AppendInt(b, v.Int(), 10)
		} else {
			b = strconv.AppendUint(b, v.Uint(), 10)
		}
	case kInt64:
		b = append(b, '"')
		if v.CanInt() {
			b = strconv.AppendInt(b, v.Int(), 10)
		} else {
			b = strconv.AppendUint(b, v.Uint(), 10)
		}
		b = append(b, '"')
	case kDecimal:
		// Plain decimal notation, as fixDecimals leaves ygot's %v.
		b = append(b, '"')
		b = strconv.AppendFloat(b, v.Float(), 'f', -1, 64)
		b = append(b, '"')
	}
	w.buf.Write(b)
	w.scratch = b
	return true, nil
}

// keyString is how ygot orders list entries: their key printed with %v,
// an enumerated key by its name.
func keyString(k reflect.Value) (string, error) {
	if defs := enumDefs(k.Type()); defs != nil {
		def, ok := defs[k.Int()]
		if !ok {
			return "", fmt.Errorf("qkd015: marshal: invalid enumerated key %d of %s", k.Int(), k.Type().Name())
		}
		return def.Name, nil
	}
	switch k.Kind() {
	case reflect.String:
		return k.String(), nil
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(k.Uint(), 10), nil
	}
	return fmt.Sprintf("%v", k.Interface()), nil
}

// str writes s as a JSON string, escaped as encoding/json does with
// SetEscapeHTML(false).
func (w *encWriter) str(s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			b, _ := jsonString(strings.ToValidUTF8(s, "\uFFFD"))
			w.buf.Write(b)
			return
		}
	}
	w.buf.WriteByte('"')
	w.buf.WriteString(s)
	w.buf.WriteByte('"')
}

// jsonString is encoding/json's rendering of s, without HTML escapes.
func jsonString(s string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
