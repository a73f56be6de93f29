package qkd015

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/openconfig/goyang/pkg/yang"
	"github.com/openconfig/ygot/ygot"
	"github.com/openconfig/ygot/ytypes"

	"github.com/qkdnet/qkdnet/gen/go/etsi015"
)

var nodeType = reflect.TypeOf(Node{})

// Check validates a JSON_IETF qkd_node document against the schema as Parse
// does (member names and modules, types, patterns, ranges, enumerations,
// list keys, unknown fields) without building the ygot tree, which costs ten
// times more. A reader that needs a few values of a document from a trusted
// peer (an agent reading the controller's push) checks it with Check and
// decodes what it needs with encoding/json.
func Check(b []byte) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return oneProblem("", "empty document: want {%q: {...}}", topMember)
	}
	v, err := decodeJSON(b)
	if err != nil {
		return oneProblem("", "%v", err)
	}
	top, ok := v.(object)
	if !ok {
		return oneProblem("", "got %s, want an object {%q: {...}}", describe(v), topMember)
	}
	var c checker
	var body any
	found := false
	for _, m := range top {
		switch m.name {
		case topMember:
			if found {
				c.addf(nodeName, "duplicate member")
				continue
			}
			found, body = true, m.value
		case nodeName:
			c.addf(nodeName, "must be written %q: RFC 7951 qualifies top-level members with their module", topMember)
		default:
			c.addf(m.name, "unknown field (want %q)", topMember)
		}
	}
	if !found && len(c.problems) == 0 {
		return oneProblem("", "empty document: no %q member", topMember)
	}
	if found {
		c.container(nodeType, body, nodeName, nodeModule)
	}
	return c.err()
}

// Parse reads a JSON_IETF (RFC 7951) document {"etsi-qkd-sdn-node:qkd_node": {...}}
// and returns its qkd_node after validating it against the schema.
//
// Parse is stricter than ygot's unmarshalling: unknown members, members
// qualified with the wrong module (or unqualified where RFC 7951 requires the
// module), duplicate members, duplicate list entries, list entries without
// their keys, numbers that are not integers of the leaf's type, 64-bit
// integers and decimal64 values not written as strings, and enumeration or
// identity values outside the leaf's type are all errors. An identity value
// may be written with or without its module ("etsi-qkd-node-types:PHYS" or
// "PHYS").
//
// The error is an *Error listing every problem found in the document (or, when
// the document is well-formed but its values are not, every problem Validate
// finds).
func Parse(b []byte) (*Node, error) {
	if err := Check(b); err != nil {
		return nil, err
	}
	var dev etsi015.Device
	if err := etsi015.Unmarshal(b, &dev); err != nil {
		// The checks above should leave nothing for ytypes to reject.
		return nil, oneProblem(nodeName, "%v", err)
	}
	n := dev.QkdNode
	if n == nil {
		n = &Node{}
	}
	if err := Validate(n); err != nil {
		return nil, err
	}
	return n, nil
}

// Validate checks a tree against the schema: patterns and ranges of every
// value (yang:uuid, date-and-time, ...), enumerated values, mandatory leaves
// (qkdn_id), list keys (set, and equal to the key the entry is stored under)
// and unique leaf-list values, then runs ygot's own validation. The error is
// an *Error; a nil node is an error.
func Validate(n *Node) error {
	if n == nil {
		return oneProblem(nodeName, "nil node")
	}
	var w walker
	w.container(reflect.ValueOf(n), nodeName)
	if len(w.problems) > 0 {
		return w.err()
	}
	// Whatever ygot checks that the walk does not (nothing, in the current
	// model: leafrefs, min/max-elements, unions would land here).
	for _, err := range ygotValidate(&etsi015.Device{QkdNode: n}) {
		w.problems = append(w.problems, tidyYgot(err.Error()))
	}
	return w.err()
}

func ygotValidate(d *etsi015.Device) []error {
	return ytypes.Validate(etsi015.SchemaTree["Device"], d)
}

// Marshal returns n as a JSON_IETF (RFC 7951) document
// {"etsi-qkd-sdn-node:qkd_node": {...}}, member names qualified with their
// module where RFC 7951 requires it, after Validate accepts n.
//
// The bytes depend only on the data: members are sorted by name, list entries
// by key, and leaf-list values by value (the model's leaf-lists are all
// ordered-by system). Two trees with the same data therefore marshal to the
// same bytes, however they were built, and Parse reads the bytes back into
// an equal tree. Empty containers are left out.
func Marshal(n *Node) ([]byte, error) {
	if err := Validate(n); err != nil {
		return nil, err
	}
	return emit(n, nil)
}

// Encode is Marshal without the validation, for trees that are valid by
// construction (the controller's state validates every entry it adds):
// validating a whole tree costs far more than encoding it.
func Encode(n *Node) ([]byte, error) { return emit(n, nil) }

// EncodeEdited is Encode of n as edit changes it, without changing n: edit
// works on the copy Encode makes anyway.
func EncodeEdited(n *Node, edit func(*Node)) ([]byte, error) { return emit(n, edit) }

// emit is Marshal without validation: the direct encoder, or ygot's for a
// tree the direct one does not handle.
func emit(n *Node, edit func(*Node)) ([]byte, error) {
	src := n
	if edit != nil {
		cp, err := ygot.DeepCopy(n)
		if err != nil {
			return nil, fmt.Errorf("qkd015: copy: %w", err)
		}
		src = cp.(*Node)
		edit(src)
	}
	b, err := encodeDirect(src)
	if !errors.Is(err, errSlowPath) {
		return b, err
	}
	return emitYgot(src)
}

// emitYgot is emit through ygot.ConstructIETFJSON, on a copy of n whose
// leaf-lists it sorts.
func emitYgot(n *Node) ([]byte, error) {
	cp, err := ygot.DeepCopy(n)
	if err != nil {
		return nil, fmt.Errorf("qkd015: copy: %w", err)
	}
	c := cp.(*Node)
	sortLeafLists(reflect.ValueOf(c))
	tree, err := ygot.ConstructIETFJSON(&etsi015.Device{QkdNode: c}, &ygot.RFC7951JSONConfig{AppendModuleName: true})
	if err != nil {
		return nil, fmt.Errorf("qkd015: marshal: %w", err)
	}
	fixDecimals(nodeType, tree[topMember])
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(tree); err != nil {
		return nil, fmt.Errorf("qkd015: marshal: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// fixDecimals rewrites the decimal64 values ygot rendered with %v (which
// writes 1234567.0 as "1.234567e+06", not a decimal64 value) in plain decimal
// notation. v is the rendering of a value of the generated struct type t.
func fixDecimals(t reflect.Type, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	si := infoOf(t)
	for k, x := range m {
		name := k
		if _, n, ok := strings.Cut(k, ":"); ok {
			name = n
		}
		f := si.byName[name]
		if f == nil {
			continue
		}
		switch e := f.entry; {
		case e.IsList():
			if entries, ok := x.([]any); ok {
				for _, entry := range entries {
					fixDecimals(f.typ.Elem().Elem(), entry)
				}
			}
		case e.IsContainer():
			fixDecimals(f.typ.Elem(), x)
		case e.Type == nil || e.Type.Kind != yang.Ydecimal64:
		case e.IsLeafList():
			if vals, ok := x.([]any); ok {
				for i := range vals {
					vals[i] = plainDecimal(vals[i])
				}
			}
		default:
			m[k] = plainDecimal(x)
		}
	}
}

func plainDecimal(x any) any {
	s, ok := x.(string)
	if !ok {
		return x
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return x
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// Decimal64 rounds x to the 3 fraction digits of the model's decimal64 leaves
// (phys_channel_att, max_absorption, phys_perf value), which Validate
// requires, and returns a pointer for the leaf.
func Decimal64(x float64) *float64 {
	r := math.Round(x*1000) / 1000
	return &r
}

// sortLeafLists sorts, in place, the values of every ordered-by-system
// leaf-list in the tree v points to.
func sortLeafLists(v reflect.Value) {
	for _, f := range infoOf(v.Elem().Type()).fields {
		fv := v.Elem().Field(f.index)
		switch e := f.entry; {
		case e.IsLeafList():
			if !e.ListAttr.OrderedByUser && fv.Len() > 1 {
				vals := make([]reflect.Value, fv.Len())
				for i := range vals {
					vals[i] = reflect.ValueOf(fv.Index(i).Interface())
				}
				slices.SortStableFunc(vals, compareValues)
				for i, x := range vals {
					fv.Index(i).Set(x)
				}
			}
		case e.IsList():
			for _, k := range fv.MapKeys() {
				if ev := fv.MapIndex(k); !ev.IsNil() {
					sortLeafLists(ev)
				}
			}
		case e.IsContainer():
			if !fv.IsNil() {
				sortLeafLists(fv)
			}
		}
	}
}

// Equal reports whether a and b hold the same data, that is whether they
// marshal to the same bytes (so leaf-list order and empty containers do not
// count). Two nil nodes are equal; nil and non-nil are not.
func Equal(a, b *Node) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, errA := emit(a, nil)
	y, errB := emit(b, nil)
	if errA != nil || errB != nil {
		// Trees ygot cannot render (an enumerated value out of range):
		// compare them as Go values.
		return reflect.DeepEqual(a, b)
	}
	return bytes.Equal(x, y)
}

// Root returns the generated fake root holding n, which ygot functions that
// work on whole trees (ygot.Diff, ygot.TogNMINotifications, ytypes.SetNode)
// take.
func Root(n *Node) *etsi015.Device {
	return &etsi015.Device{QkdNode: n}
}
