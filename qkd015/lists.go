package qkd015

// The generated Get<Container>() accessors return nil for an absent
// container, and reading a list field through nil panics. These return the
// lists of a tree, nil (which ranges as empty) where the container is absent.

// Links returns the node's qkd_links/qkd_link list.
func Links(n *Node) map[string]*Link {
	if c := n.GetQkdLinks(); c != nil {
		return c.QkdLink
	}
	return nil
}

// Apps returns the node's qkd_applications/qkd_app list.
func Apps(n *Node) map[string]*App {
	if c := n.GetQkdApplications(); c != nil {
		return c.QkdApp
	}
	return nil
}

// SAEs returns the node's saes/sae list (qkdnet-sdn-ext).
func SAEs(n *Node) map[string]*SAE {
	if c := n.GetSaes(); c != nil {
		return c.Sae
	}
	return nil
}

// Interfaces returns the node's qkd_interfaces/qkd_interface list.
func Interfaces(n *Node) map[uint32]*Interface {
	if c := n.GetQkdInterfaces(); c != nil {
		return c.QkdInterface
	}
	return nil
}

// Hops returns an application's hops/hop list (qkdnet-sdn-ext).
func Hops(a *App) map[string]*Hop {
	if c := a.GetHops(); c != nil {
		return c.Hop
	}
	return nil
}

// DrainHops returns an application's drain_hops/drain_hop list
// (qkdnet-sdn-ext): the hops of its earlier paths at this node.
func DrainHops(a *App) map[DrainHopKey]*DrainHop {
	if c := a.GetDrainHops(); c != nil {
		return c.DrainHop
	}
	return nil
}
