package main

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/qkdnet/qkdnet/testbed"
)

func benchEndpoints(n int) testbed.Endpoints {
	e := testbed.Endpoints{KMMs: []testbed.KMMEntry{
		{Node: "A", KMEID: "KME_A", URL: "https://127.0.0.1:18443"},
		{Node: "B", KMEID: "KME_B", URL: "https://127.0.0.1:18444"},
	}}
	// Listed B first and in lexical order (SAE_B1, SAE_B10, SAE_B11, ...),
	// so only natural sorting by KMM pairs them right.
	var ids []string
	for i := 1; i <= n; i++ {
		ids = append(ids, fmt.Sprint(i))
	}
	for _, node := range []string{"B", "A"} {
		sorted := append([]string(nil), ids...)
		slices.Sort(sorted)
		for _, id := range sorted {
			e.SAEs = append(e.SAEs, testbed.SAEEntry{SAEID: "SAE_" + node + id, KMM: node})
		}
	}
	return e
}

func pairNames(ps []pair) []string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String()+"@"+p.MasterKMM.Node+p.SlaveKMM.Node)
	}
	return s
}

func TestFindPairs(t *testing.T) {
	bench := func() []string {
		var s []string
		for i := 1; i <= 16; i++ {
			s = append(s, fmt.Sprintf("SAE_A%d->SAE_B%d@AB", i, i))
		}
		return s
	}()
	tests := []struct {
		desc    string
		e       testbed.Endpoints
		want    []string
		wantErr string
	}{
		{
			desc: "default topology",
			e: testbed.Endpoints{
				KMMs: []testbed.KMMEntry{{Node: "A"}, {Node: "B"}},
				SAEs: []testbed.SAEEntry{{SAEID: "SAE_B", KMM: "B"}, {SAEID: "SAE_A", KMM: "A"}},
			},
			want: []string{"SAE_A->SAE_B@AB"},
		},
		{desc: "bench topology", e: benchEndpoints(16), want: bench},
		{
			desc: "KMM referred to by KME_ID",
			e: testbed.Endpoints{
				KMMs: []testbed.KMMEntry{{Node: "A", KMEID: "KME_A"}, {Node: "B", KMEID: "KME_B"}},
				SAEs: []testbed.SAEEntry{{SAEID: "SAE_A", KMM: "KME_A"}, {SAEID: "SAE_B", KMM: "KME_B"}},
			},
			want: []string{"SAE_A->SAE_B@AB"},
		},
		{
			desc: "uneven sides pair as many as the smaller",
			e: testbed.Endpoints{
				KMMs: []testbed.KMMEntry{{Node: "A"}, {Node: "B"}},
				SAEs: []testbed.SAEEntry{{SAEID: "X2", KMM: "A"}, {SAEID: "X1", KMM: "A"}, {SAEID: "Y1", KMM: "B"}},
			},
			want: []string{"X1->Y1@AB"},
		},
		{
			desc: "slaves come from every other KMM",
			e: testbed.Endpoints{
				KMMs: []testbed.KMMEntry{{Node: "A"}, {Node: "B"}, {Node: "C"}},
				SAEs: []testbed.SAEEntry{
					{SAEID: "SAE_A1", KMM: "A"}, {SAEID: "SAE_A2", KMM: "A"},
					{SAEID: "SAE_C1", KMM: "C"}, {SAEID: "SAE_B1", KMM: "B"},
				},
			},
			want: []string{"SAE_A1->SAE_B1@AB", "SAE_A2->SAE_C1@AC"},
		},
		{
			desc: "all SAEs on one KMM",
			e: testbed.Endpoints{
				KMMs: []testbed.KMMEntry{{Node: "A"}, {Node: "B"}},
				SAEs: []testbed.SAEEntry{{SAEID: "SAE_A", KMM: "A"}, {SAEID: "SAE_A2", KMM: "A"}},
			},
			wantErr: "at least two KMMs",
		},
		{
			desc: "SAE on an unknown KMM",
			e: testbed.Endpoints{
				KMMs: []testbed.KMMEntry{{Node: "A"}},
				SAEs: []testbed.SAEEntry{{SAEID: "SAE_Z", KMM: "Z"}},
			},
			wantErr: `KMM "Z"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := findPairs(tt.e)
			checkPairs(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestParsePairs(t *testing.T) {
	e := benchEndpoints(2)
	tests := []struct {
		spec    string
		want    []string
		wantErr string
	}{
		{spec: "SAE_A2:SAE_B1", want: []string{"SAE_A2->SAE_B1@AB"}},
		{spec: " SAE_A1:SAE_B1 , SAE_B2:SAE_A2 ,", want: []string{"SAE_A1->SAE_B1@AB", "SAE_B2->SAE_A2@BA"}},
		{spec: "SAE_A1", wantErr: "MASTER:SLAVE"},
		{spec: "SAE_A1:SAE_Q", wantErr: `no SAE "SAE_Q"`},
		{spec: ",", wantErr: "no pair"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := parsePairs(e, tt.spec)
			checkPairs(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func checkPairs(t *testing.T, got []pair, err error, want []string, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %v, want one containing %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if g := pairNames(got); !reflect.DeepEqual(g, want) {
		t.Errorf("pairs\n got %v\nwant %v", g, want)
	}
}

func TestPairOf(t *testing.T) {
	tests := []struct {
		workers, pairs int
		want           []int
	}{
		{workers: 16, pairs: 1, want: []int{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{workers: 5, pairs: 2, want: []int{0, 1, 0, 1, 0}},
		{workers: 3, pairs: 16, want: []int{0, 1, 2}},
		{workers: 4, pairs: 4, want: []int{0, 1, 2, 3}},
	}
	for _, tt := range tests {
		var got []int
		for i := range tt.workers {
			got = append(got, pairOf(i, tt.pairs))
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%d workers on %d pairs: %v, want %v", tt.workers, tt.pairs, got, tt.want)
		}
	}
}

func TestNaturalCompare(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"SAE_A2", "SAE_A10", -1},
		{"SAE_A10", "SAE_A2", 1},
		{"SAE_A1", "SAE_A1", 0},
		{"SAE_A", "SAE_A1", -1},
		{"SAE_A9", "SAE_B1", -1},
		{"x01", "x1", 1},
		{"x1", "x01", -1},
		{"x99999999999999999999999", "x100000000000000000000000", -1},
		{"a1b2", "a1b10", -1},
	}
	for _, tt := range tests {
		if got := naturalCompare(tt.a, tt.b); got != tt.want {
			t.Errorf("naturalCompare(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
