package keystore

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/qkdnet/qkdnet/driver"
)

// fillBatch is how many keys the benchmarks' setup moves per transaction.
const fillBatch = 4096

// fillNoSync supplies parts keys to link L of the stores (the ends of one
// link) and allocates them to stream S, without fsync, then reopens the
// stores with fsync for the measured part.
func fillNoSync(b *testing.B, parts int, ends int) []*Store {
	b.Helper()
	dirs := make([]string, ends)
	stores := make([]*Store, ends)
	for i := range stores {
		dirs[i] = b.TempDir()
		s, err := Open(dirs[i], Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		stores[i] = s
	}
	master := stores[0]
	if _, err := master.PutStream(testStream("S", "L")); err != nil {
		b.Fatal(err)
	}
	for done, batch := 0, 0; done < parts; batch++ {
		n := min(fillBatch, parts-done)
		keys := mkKeys(fmt.Sprintf("b%d", batch), 0, n)
		for _, s := range stores {
			if err := s.AddToPool("L", keys); err != nil {
				b.Fatal(err)
			}
		}
		id := fmt.Sprintf("fill-%d", batch)
		p, err := master.Reserve("S", id, n)
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range stores[1:] {
			if unk, err := s.Apply(id, p.Stream, p.FirstSeq, p.KeyIDs); err != nil || len(unk) != 0 {
				b.Fatalf("Apply = %v, %v", unk, err)
			}
		}
		if _, err := master.Commit(id, nil, 3); err != nil {
			b.Fatal(err)
		}
		done += n
	}
	for i, s := range stores {
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		s, err := Open(dirs[i], Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		stores[i] = s
	}
	return stores
}

func BenchmarkAddToPool(b *testing.B) {
	const batch = 1024
	s := openStore(b, b.TempDir(), Options{})
	keys := mkKeys("tmpl", 0, batch)
	b.ReportAllocs()
	b.SetBytes(batch * partSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for j := range keys {
			keys[j].ID = fmt.Sprintf("k-%d-%d", i, j)
		}
		b.StartTimer()
		if err := s.AddToPool("L", keys); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "keys/s")
	if got := s.PoolCount("L"); got != b.N*batch {
		b.Fatalf("PoolCount = %d, want %d", got, b.N*batch)
	}
}

// BenchmarkTakeNext16 is 16 concurrent master SAEs each asking enc_keys for
// 16 keys of 256 bits.
func BenchmarkTakeNext16(b *testing.B) {
	s := fillNoSync(b, 16*b.N+16, 1)[0]
	b.ReportAllocs()
	b.SetParallelism(parallelism16())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			sv, err := s.TakeNext("S", 16, 256)
			if err != nil {
				b.Error(err)
				return
			}
			zeroServed(sv)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(16*b.N)/b.Elapsed().Seconds(), "keys/s")
}

// BenchmarkTakeIDs16 is 16 concurrent slave SAEs each asking dec_keys for 16
// key_IDs the master served.
func BenchmarkTakeIDs16(b *testing.B) {
	stores := fillNoSync(b, 16*b.N, 2)
	master, slave := stores[0], stores[1]
	reqs := make([][]string, b.N)
	for i := range reqs {
		sv, err := master.TakeNext("S", 16, 256)
		if err != nil {
			b.Fatal(err)
		}
		reqs[i] = servedIDs(sv)
		zeroServed(sv)
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(parallelism16())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1) - 1
			sv, err := slave.TakeIDs("S", reqs[i])
			if err != nil {
				b.Error(err)
				return
			}
			zeroServed(sv)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(16*b.N)/b.Elapsed().Seconds(), "keys/s")
}

func BenchmarkSealOpen(b *testing.B) {
	kek := keyBytes("bench kek", kekSize)
	s := newSealer(kek)
	key := keyBytes("k", partSize)
	b.ReportAllocs()
	b.SetBytes(partSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		blob, err := s.seal("k-000001", key)
		if err != nil {
			b.Fatal(err)
		}
		pt, err := s.open("k-000001", blob)
		if err != nil {
			b.Fatal(err)
		}
		driver.Zero(pt)
	}
}

// parallelism16 makes RunParallel run about 16 goroutines, like 16 SAEs.
func parallelism16() int { return max(1, 16/runtime.GOMAXPROCS(0)) }
