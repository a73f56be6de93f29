package testbed

import (
	"testing"
)

// FuzzParseTopology: no topology file makes the loader panic, and what it
// accepts validates.
func FuzzParseTopology(f *testing.F) {
	for _, name := range EmbeddedTopologies() {
		b, err := embedded.ReadFile("topologies/" + name + ".yaml")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("nodes: [{id: A}]\nlinks: [{id: L, a: A, b: A}]\n"))
	f.Add([]byte("nodes: {}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		top, err := ParseTopology(b)
		if err != nil {
			return
		}
		if err := top.Validate(); err != nil {
			t.Fatalf("ParseTopology accepted a topology that does not validate: %v", err)
		}
	})
}
