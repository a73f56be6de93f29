package keystore

import (
	"fmt"
	"testing"
	"time"
)

func TestHistoryRollsAndSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2030, 1, 2, 3, 4, 0, 0, time.UTC)
	for i := range 10 {
		if err := s.AppendHistory(t0.Add(time.Duration(i)*10*time.Second), []byte(fmt.Sprint(i)), 35*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.History(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	// The last sample is at 90 s; with 35 s kept, 60, 70, 80 and 90 remain.
	want := []string{"6", "7", "8", "9"}
	if len(got) != len(want) {
		t.Fatalf("history has %d samples, want %d", len(got), len(want))
	}
	for i, e := range got {
		if string(e.Data) != want[i] || !e.At.Equal(t0.Add(time.Duration(6+i)*10*time.Second)) {
			t.Fatalf("sample %d = %q at %v", i, e.Data, e.At)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, Options{})
	got, err = s.History(t0.Add(75 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got[0].Data) != "8" || string(got[1].Data) != "9" {
		t.Fatalf("after reopen, history since 75 s = %v", got)
	}
	if err := s.AppendHistory(time.Time{}, nil, time.Minute); err == nil {
		t.Fatal("a sample without a time was stored")
	}
}
