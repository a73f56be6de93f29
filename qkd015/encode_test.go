package qkd015

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/openconfig/ygot/ygot"
)

// fill sets random values in the generated struct v points to: every kind
// of leaf (strings that need escaping, 8- to 64-bit integers, decimals,
// booleans, enumerations and identities, unset ones too), leaf-lists, empty
// and nested containers, and lists with zero to three entries.
func fill(r *rand.Rand, v reflect.Value, depth int) {
	t := v.Elem().Type()
	for _, f := range infoOf(t).fields {
		fv := v.Elem().Field(f.index)
		if r.IntN(4) == 0 {
			continue // left unset
		}
		switch e := f.entry; {
		case e.IsList():
			if depth > 4 {
				continue
			}
			m := reflect.MakeMap(f.typ)
			for range r.IntN(4) {
				ev := reflect.New(f.typ.Elem().Elem())
				fill(r, ev, depth+1)
				m.SetMapIndex(randomValue(r, f.typ.Key()), ev)
			}
			fv.Set(m)
		case e.IsContainer():
			if depth > 4 {
				continue
			}
			cv := reflect.New(f.typ.Elem())
			if r.IntN(3) > 0 {
				fill(r, cv, depth+1)
			}
			fv.Set(cv)
		case e.IsLeafList():
			s := reflect.MakeSlice(f.typ, 0, 3)
			for range r.IntN(4) {
				s = reflect.Append(s, randomValue(r, f.typ.Elem()))
			}
			fv.Set(s)
		default:
			fv.Set(randomValue(r, f.typ))
		}
	}
}

var randomStrings = []string{"A", "FSO_AB", "", "a\"quote", "back\\slash", "ctl\x01\n", "ünïcode", "<html>&", "bad\xffutf8", "line\u2028sep", "9", "10"}

func randomValue(r *rand.Rand, t reflect.Type) reflect.Value {
	if defs := enumDefs(t); defs != nil {
		keys := []int64{0}
		for k := range defs {
			keys = append(keys, k)
		}
		return reflect.ValueOf(keys[r.IntN(len(keys))]).Convert(t)
	}
	if t.Kind() == reflect.Ptr {
		p := reflect.New(t.Elem())
		p.Elem().Set(randomValue(r, t.Elem()))
		return p
	}
	v := reflect.New(t).Elem()
	switch t.Kind() {
	case reflect.String:
		v.SetString(randomStrings[r.IntN(len(randomStrings))])
	case reflect.Bool:
		v.SetBool(r.IntN(2) == 0)
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(r.Int64N(1<<(t.Bits()-1)) - r.Int64N(1<<(t.Bits()-1)))
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(r.Uint64() >> (64 - t.Bits()))
	case reflect.Float64:
		v.SetFloat([]float64{0, 1.5, 1234567.0, 0.001, -2.25, 1e21, 12.345}[r.IntN(7)])
	case reflect.Struct:
		for i := range t.NumField() {
			v.Field(i).Set(randomValue(r, t.Field(i).Type))
		}
	}
	return v
}

// TestFastEncodeMatchesYgot: the direct encoder writes the same bytes as
// ygot.ConstructIETFJSON (with the decimal and leaf-list fixes) for random
// trees that use every kind of value of the model, and for the example.
func TestFastEncodeMatchesYgot(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 400 {
		n := &Node{}
		fill(r, reflect.ValueOf(n), 0)
		want, werr := emitYgot(n)
		got, gerr := encodeDirect(n)
		if (werr != nil) != (gerr != nil) {
			t.Fatalf("tree %d: ygot error %v, direct error %v", i, werr, gerr)
		}
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("tree %d differs:\n direct %s\n ygot   %s", i, got, want)
		}
	}
	// The tree itself is not changed (leaf-lists are sorted on the way out).
	checked := 0
	for checked < 20 {
		n := &Node{}
		fill(r, reflect.ValueOf(n), 0)
		// Compare with ygot's encoding of a copy, taken before: DeepCopy
		// does not keep empty slices, so the trees are compared as bytes.
		cp, _ := ygot.DeepCopy(n)
		before, err := emitYgot(cp.(*Node))
		if err != nil {
			continue
		}
		snapshot := fmt.Sprintf("%#v", n)
		if _, err := encodeDirect(n); err != nil {
			continue // a random unset enumerated key
		}
		after, _ := emitYgot(n)
		if !bytes.Equal(before, after) || snapshot != fmt.Sprintf("%#v", n) {
			t.Fatal("encodeDirect changed the tree")
		}
		checked++
	}
}

func BenchmarkEncode(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	n := &Node{}
	for fill(r, reflect.ValueOf(n), 0); ; fill(r, reflect.ValueOf(n), 0) {
		if _, err := encodeDirect(n); err == nil {
			break
		}
		n = &Node{}
	}
	b.Run("ygot", func(b *testing.B) {
		for b.Loop() {
			emitYgot(n)
		}
	})
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			encodeDirect(n)
		}
	})
}
