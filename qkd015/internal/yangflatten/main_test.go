package main

import (
	"os"
	"strings"
	"testing"

	"github.com/openconfig/goyang/pkg/yang"
)

const sample = `module m {
  namespace "urn:m";
  prefix "m";
  grouping g {
    description "dropped";
    container c {
      leaf a { type string; }
    }
  }
  grouping h {
    uses m:g {
      description "a uses with an augment";
      augment "c" {
        description "dropped too";
        leaf b { type boolean; default false; }
      }
    }
  }
  container top {
    uses h;
    leaf p { type string { pattern '[a-z]+\d'; } description "two\nlines \"quoted\""; }
  }
}
`

// entries loads a module from source with goyang, as the ygot generator does.
func entries(t *testing.T, src string) *yang.Entry {
	t.Helper()
	ms := yang.NewModules()
	if err := ms.Parse(src, "m.yang"); err != nil {
		t.Fatalf("goyang: %v\n%s", err, src)
	}
	if errs := ms.Process(); len(errs) > 0 {
		t.Fatalf("goyang: %v\n%s", errs, src)
	}
	return yang.ToEntry(ms.Modules["m"])
}

func TestFlatten(t *testing.T) {
	before := entries(t, sample).Dir["top"].Dir["c"]
	if before.Dir["b"] != nil {
		t.Fatal("goyang now applies augments in uses: yangflatten may be unnecessary")
	}
	out, n, err := flatten([]byte(sample), "m.yang")
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("inlined %d uses, want 1", n)
	}
	after := entries(t, string(out))
	c := after.Dir["top"].Dir["c"]
	if c == nil || c.Dir["a"] == nil || c.Dir["b"] == nil {
		t.Fatalf("flattened module lacks top/c/a or top/c/b:\n%s", out)
	}
	if got := c.Dir["b"].Default; len(got) != 1 || got[0] != "false" {
		t.Errorf("b's default = %v", got)
	}
	if ns := c.Dir["b"].Namespace().Name; ns != "urn:m" {
		t.Errorf("b's namespace = %q", ns)
	}
	p := after.Dir["top"].Dir["p"]
	if got := p.Type.Pattern; len(got) != 1 || got[0] != `[a-z]+\d` {
		t.Errorf("pattern = %q", got)
	}
	if p.Description != "two\nlines \"quoted\"" {
		t.Errorf("description = %q", p.Description)
	}
	again, _, err := flatten([]byte(sample), "m.yang")
	if err != nil || string(again) != string(out) {
		t.Errorf("output not deterministic")
	}
}

func TestFlattenRefuses(t *testing.T) {
	for name, body := range map[string]string{
		"refine":         `uses g { refine "c" { description "x"; } augment "c" { leaf b { type string; } } }`,
		"when":           `uses g { when "1"; augment "c" { leaf b { type string; } } }`,
		"missing target": `uses g { augment "d" { leaf b { type string; } } }`,
		"foreign prefix": `uses x:g { augment "c" { leaf b { type string; } } }`,
		"augment when":   `uses g { augment "c" { when "1"; leaf b { type string; } } }`,
	} {
		src := `module m { namespace "urn:m"; prefix "m";
  grouping g { container c { leaf a { type string; } } }
  container top { ` + body + ` } }`
		if _, _, err := flatten([]byte(src), "m.yang"); err == nil {
			t.Errorf("%s: flatten accepted %s", name, body)
		}
	}
}

// The ETSI module: the app_qos leaves reach the applications list.
func TestFlattenETSI(t *testing.T) {
	src, err := os.ReadFile("../../../yang/etsi-qkd-sdn-node.yang")
	if err != nil {
		t.Fatal(err)
	}
	out, n, err := flatten(src, "yang/etsi-qkd-sdn-node.yang")
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("inlined %d uses, want 1 (grouping augmented_app_qos)", n)
	}
	for _, leaf := range []string{"clients_shared_path_enable", "clients_shared_keys_required"} {
		if !strings.Contains(string(out), "leaf "+leaf+" {") {
			t.Errorf("output lacks leaf %s", leaf)
		}
	}
}
