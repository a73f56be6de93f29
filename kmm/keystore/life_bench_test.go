package keystore

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkKeyLife runs the whole life of keys through the stores of both
// ends of a link, concurrently, as an agent pair under `make bench` does: a
// driver supplies batches of 1024 keys to both ends, an allocator moves them
// into the stream in batches (Reserve, Apply, Commit), and 16 SAE pairs each
// take 16 keys with TakeNext at the master and the same keys with TakeIDs at
// the slave. It reports keys/s over the whole life of a key, fsync on.
func BenchmarkKeyLife(b *testing.B) {
	const (
		supplyBatch = 1024
		allocBatch  = 2048
		workers     = 16
		perRequest  = 16
	)
	master := openStore(b, b.TempDir(), Options{})
	slave := openStore(b, b.TempDir(), Options{})
	st := mustPutStream(b, master, Stream{ID: "S", MasterSAE: "a", SlaveSAE: "b", Link: "L", QoS: QoS{KeyRate: 10, MaxBuffer: 4096}})
	total := b.N * perRequest
	stop := make(chan struct{})
	var wg sync.WaitGroup

	// Driver: both ends get the same keys, the slave first.
	supplied := make(chan struct{}, 1<<20)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; n < total+allocBatch; n += supplyBatch {
			keys := mkKeys(fmt.Sprintf("life%d", n), 0, supplyBatch)
			if err := slave.AddToPool("L", copyKeys(keys)); err != nil {
				b.Error(err)
				return
			}
			if err := master.AddToPool("L", keys); err != nil {
				b.Error(err)
				return
			}
			select {
			case supplied <- struct{}{}:
			case <-stop:
				return
			}
		}
	}()
	// Allocator: keeps the stream topped up.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for batch := 0; ; batch++ {
			for master.StreamCount("S") >= allocBatch {
				select {
				case <-master.Changed():
				case <-stop:
					return
				}
			}
			if master.PoolCount("L") == 0 {
				select {
				case <-supplied:
				case <-stop:
					return
				}
				continue
			}
			id := fmt.Sprintf("batch-%d", batch)
			p, err := master.Reserve("S", id, allocBatch)
			if err != nil {
				b.Error(err)
				return
			}
			unk, err := slave.Apply(id, p.Stream, p.FirstSeq, p.KeyIDs)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := master.Commit(id, unk, 3); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	_ = st

	b.ReportAllocs()
	b.ResetTimer()
	var next atomic.Int64
	var served atomic.Int64
	var ww sync.WaitGroup
	for range workers {
		ww.Add(1)
		go func() {
			defer ww.Done()
			for next.Add(1) <= int64(b.N) {
				var sv []Served
				for {
					var err error
					sv, err = master.TakeNext("S", perRequest, 256)
					if err == nil {
						break
					}
					if err != ErrNotEnoughKeys {
						b.Error(err)
						return
					}
					select {
					case <-master.Changed():
					case <-stop:
						return
					}
				}
				got, err := slave.TakeIDs("S", servedIDs(sv))
				if err != nil {
					b.Error(err)
					return
				}
				for i := range sv {
					if string(sv[i].Key) != string(got[i].Key) {
						b.Error("mismatch")
					}
				}
				zeroServed(sv)
				zeroServed(got)
				served.Add(int64(len(sv)))
			}
		}()
	}
	ww.Wait()
	b.StopTimer()
	close(stop)
	wg.Wait()
	b.ReportMetric(float64(served.Load())/b.Elapsed().Seconds(), "keys/s")
	b.ReportMetric(0, "ns/op")
	for i, st := range []*Store{master, slave} {
		end := [...]string{"master", "slave"}[i]
		ws := st.WriteStats()
		b.ReportMetric(float64(ws.Commits)/b.Elapsed().Seconds(), end+"_commits/s")
		b.ReportMetric(float64(ws.ServeGroups)/b.Elapsed().Seconds(), end+"_serve_syncs/s")
		b.ReportMetric(float64(ws.Serves)/float64(max(ws.ServeGroups, 1)), end+"_serves/sync")
	}
}
