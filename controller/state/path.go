package state

import (
	"container/heap"
	"maps"
	"slices"
)

// Weight prices a link for path computation; a negative weight excludes it.
type Weight func(LinkInfo) float64

// Hops weighs every enabled link 1: the path with the fewest trusted nodes.
func Hops(l LinkInfo) float64 { return 1 }

// ShortestPath returns the cheapest path of enabled links from node from to
// node to (link names in order), or nil if none exists. Ties go to the
// lexically smaller link names, so every replica computes the same path.
func (s *State) ShortestPath(from, to string, w Weight) []string {
	if w == nil {
		w = Hops
	}
	if _, ok := s.nodes[from]; !ok {
		return nil
	}
	if from == to {
		return []string{}
	}
	adj := map[string][]*LinkInfo{}
	for _, name := range slices.Sorted(maps.Keys(s.links)) {
		l := s.links[name]
		if !l.Enabled {
			continue
		}
		adj[l.A] = append(adj[l.A], l)
		adj[l.B] = append(adj[l.B], l)
	}
	dist := map[string]float64{from: 0}
	via := map[string]*LinkInfo{}
	done := map[string]bool{}
	q := &pq{items: []item{{node: from}}}
	for q.Len() > 0 {
		it := heap.Pop(q).(item)
		if done[it.node] {
			continue
		}
		done[it.node] = true
		if it.node == to {
			break
		}
		for _, l := range adj[it.node] {
			c := w(*l)
			if c < 0 {
				continue
			}
			next := l.Other(it.node)
			d := it.dist + c
			if old, ok := dist[next]; !done[next] && (!ok || d < old) {
				dist[next] = d
				via[next] = l
				heap.Push(q, item{node: next, dist: d})
			}
		}
	}
	if !done[to] {
		return nil
	}
	var path []string
	for at := to; at != from; {
		l := via[at]
		path = append(path, l.Name)
		at = l.Other(at)
	}
	slices.Reverse(path)
	return path
}

type item struct {
	node string
	dist float64
	seq  int
}

// pq is a min-heap of nodes by distance, then by insertion order, which
// makes the result independent of map iteration.
type pq struct {
	items  []item
	pushed int
}

func (q *pq) Len() int { return len(q.items) }
func (q *pq) Less(i, j int) bool {
	if q.items[i].dist != q.items[j].dist {
		return q.items[i].dist < q.items[j].dist
	}
	return q.items[i].seq < q.items[j].seq
}
func (q *pq) Swap(i, j int) { q.items[i], q.items[j] = q.items[j], q.items[i] }
func (q *pq) Push(x any) {
	it := x.(item)
	q.pushed++
	it.seq = q.pushed
	q.items = append(q.items, it)
}
func (q *pq) Pop() any {
	it := q.items[len(q.items)-1]
	q.items = q.items[:len(q.items)-1]
	return it
}
