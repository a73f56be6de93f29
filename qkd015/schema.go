package qkd015

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/openconfig/goyang/pkg/yang"
	"github.com/openconfig/ygot/ygot"

	"github.com/qkdnet/qkdnet/gen/go/etsi015"
)

// topMember is the only member of a document: RFC 7951 qualifies top-level
// names with their module.
const (
	nodeModule = "etsi-qkd-sdn-node"
	nodeName   = "qkd_node"
	topMember  = nodeModule + ":" + nodeName
)

// field is one YANG child of a generated struct.
type field struct {
	name   string      // YANG identifier, e.g. "qkdl_id"
	module string      // module that defines the node (RFC 7951 qualification)
	entry  *yang.Entry // its schema
	index  int         // Go field index
	typ    reflect.Type
	// elem is a copy of a leaf-list's schema as a single leaf, to validate
	// its values one by one.
	elem *yang.Entry
}

type structInfo struct {
	entry  *yang.Entry
	fields []*field // Go field order
	byName map[string]*field
}

var structCache sync.Map // reflect.Type -> *structInfo

// infoOf describes the generated struct type t (not a pointer).
func infoOf(t reflect.Type) *structInfo {
	if v, ok := structCache.Load(t); ok {
		return v.(*structInfo)
	}
	entry := etsi015.SchemaTree[t.Name()]
	if entry == nil {
		panic(fmt.Sprintf("qkd015: no schema for %v", t))
	}
	si := &structInfo{entry: entry, byName: map[string]*field{}}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		path, ok := sf.Tag.Lookup("path")
		if !ok {
			continue
		}
		if strings.Contains(path, "/") {
			panic(fmt.Sprintf("qkd015: %v.%s: compressed path %q", t, sf.Name, path))
		}
		f := &field{
			name:   path,
			module: sf.Tag.Get("module"),
			entry:  entry.Dir[path],
			index:  i,
			typ:    sf.Type,
		}
		if f.entry == nil {
			panic(fmt.Sprintf("qkd015: %v.%s: no schema for %q", t, sf.Name, path))
		}
		if f.entry.IsLeafList() {
			e := *f.entry
			e.ListAttr = nil
			f.elem = &e
		}
		si.fields = append(si.fields, f)
		si.byName[path] = f
	}
	v, _ := structCache.LoadOrStore(t, si)
	return v.(*structInfo)
}

// scalarType is the Go type of one value of a leaf or leaf-list field.
func scalarType(t reflect.Type) reflect.Type {
	if t.Kind() == reflect.Slice && t != reflect.TypeOf(etsi015.Binary(nil)) {
		t = t.Elem()
	}
	if t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	return t
}

// enumDefs returns the values of the generated enumerated type t, or nil when
// t is not one.
func enumDefs(t reflect.Type) map[int64]ygot.EnumDefinition {
	if t.Kind() != reflect.Int64 {
		return nil
	}
	e, ok := reflect.Zero(t).Interface().(ygot.GoEnum)
	if !ok {
		return nil
	}
	return e.ΛMap()[t.Name()]
}

// typeName is how messages name a leaf's type: its typedef ("uuid",
// "kmm-role") or built-in type ("uint32").
func typeName(e *yang.Entry) string {
	if e.Type == nil {
		return "?"
	}
	return e.Type.Name
}

// isBuiltin reports whether the leaf's type is a built-in type used directly
// rather than a typedef.
func isBuiltin(e *yang.Entry) bool {
	return e.Type != nil && e.Type.Name == yang.TypeKindToName[e.Type.Kind]
}

// sortedDefs returns an enumerated type's values in their numeric (that is,
// alphabetical) order.
func sortedDefs(defs map[int64]ygot.EnumDefinition) []ygot.EnumDefinition {
	keys := make([]int64, 0, len(defs))
	for k := range defs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]ygot.EnumDefinition, len(keys))
	for i, k := range keys {
		out[i] = defs[k]
	}
	return out
}
