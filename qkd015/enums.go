package qkd015

import (
	"reflect"

	"github.com/openconfig/ygot/ygot"

	"github.com/qkdnet/qkdnet/gen/go/etsi015"
)

// Node is ETSI 015's qkd_node container (with qkdnet-sdn-ext's augmentations):
// the whole configuration and state of one SD-QKD node.
type Node = etsi015.EtsiQkdSdnNode_QkdNode

// The list entries and containers the controller and agents build. They are
// the generated types; the aliases only shorten the names.
type (
	// Link is one qkd_links/qkd_link entry, keyed by qkdl_id.
	Link = etsi015.EtsiQkdSdnNode_QkdNode_QkdLinks_QkdLink
	// App is one qkd_applications/qkd_app entry (a key stream), keyed by app_id.
	App = etsi015.EtsiQkdSdnNode_QkdNode_QkdApplications_QkdApp
	// AppQoS is a qkd_app's app_qos container.
	AppQoS = etsi015.EtsiQkdSdnNode_QkdNode_QkdApplications_QkdApp_AppQos
	// Hop is one qkdnet-sdn-ext hops/hop entry of a qkd_app, keyed by qkdl_id.
	Hop = etsi015.EtsiQkdSdnNode_QkdNode_QkdApplications_QkdApp_Hops_Hop
	// DrainHop is one qkdnet-sdn-ext drain_hops/drain_hop entry of a
	// qkd_app (a hop of an earlier path), keyed by generation and qkdl_id.
	DrainHop = etsi015.EtsiQkdSdnNode_QkdNode_QkdApplications_QkdApp_DrainHops_DrainHop
	// DrainHopKey is the key of a DrainHop.
	DrainHopKey = etsi015.EtsiQkdSdnNode_QkdNode_QkdApplications_QkdApp_DrainHops_DrainHop_Key
	// SAE is one qkdnet-sdn-ext saes/sae entry of the node, keyed by sae_id.
	SAE = etsi015.EtsiQkdSdnNode_QkdNode_Saes_Sae
	// Interface is one qkd_interfaces/qkd_interface entry (a QKD module).
	Interface = etsi015.EtsiQkdSdnNode_QkdNode_QkdInterfaces_QkdInterface
)

// Enumerated types. ygot maps each YANG enumeration and identityref to an
// int64-based type whose zero value means "unset" (the leaf is absent). The
// integers are ygot's, numbered alphabetically at generation time: store and
// send the names (String, or Marshal), never the numbers.
type (
	LinkType    = etsi015.E_EtsiQkdNodeTypes_QkdLinkTypes       // qkdl_type (identity)
	LinkStatus  = etsi015.E_EtsiQkdNodeTypes_LinkStatusTypes    // qkdl_status (identity)
	AppType     = etsi015.E_EtsiQkdNodeTypes_QkdAppTypes        // app_type (identity)
	AppStatus   = etsi015.E_EtsiQkdNodeTypes_AppStatusTypes     // app_status (identity)
	NodeStatus  = etsi015.E_EtsiQkdNodeTypes_QkdnStatusTypes    // qkdn_status (identity)
	QKDRole     = etsi015.E_EtsiQkdNodeTypes_QkdRoleTypes       // phys_qkd_role, role_support (identity)
	Technology  = etsi015.E_EtsiQkdNodeTypes_QkdTechnologyTypes // qkdi_type (identity)
	IfaceStatus = etsi015.E_EtsiQkdNodeTypes_IfaceStatusTypes   // qkdi_status (identity)
	PerfType    = etsi015.E_EtsiQkdNodeTypes_PhysPerfTypes      // phys_perf key perf_type (identity)
	KMMRole     = etsi015.E_QkdnetSdnExt_KmmRole                // kmm_role, hop role (qkdnet-sdn-ext enumeration)
)

// qkdl_type.
const (
	LinkPhys = etsi015.EtsiQkdNodeTypes_QkdLinkTypes_PHYS // a quantum channel between two QKD modules
	LinkVirt = etsi015.EtsiQkdNodeTypes_QkdLinkTypes_VIRT // a key-relayed link over PHYS links
)

// qkdl_status.
const (
	LinkActive  = etsi015.EtsiQkdNodeTypes_LinkStatusTypes_ACTIVE
	LinkPassive = etsi015.EtsiQkdNodeTypes_LinkStatusTypes_PASSIVE
	LinkPending = etsi015.EtsiQkdNodeTypes_LinkStatusTypes_PENDING
	LinkOff     = etsi015.EtsiQkdNodeTypes_LinkStatusTypes_OFF
)

// app_type.
const (
	AppClient   = etsi015.EtsiQkdNodeTypes_QkdAppTypes_CLIENT   // a key stream between two SAEs
	AppInternal = etsi015.EtsiQkdNodeTypes_QkdAppTypes_INTERNAL // the network's own use (key relay, authentication)
)

// app_status.
const (
	AppOn           = etsi015.EtsiQkdNodeTypes_AppStatusTypes_ON
	AppDisconnected = etsi015.EtsiQkdNodeTypes_AppStatusTypes_DISCONNECTED
	AppOutOfTime    = etsi015.EtsiQkdNodeTypes_AppStatusTypes_OUT_OF_TIME
	AppZombie       = etsi015.EtsiQkdNodeTypes_AppStatusTypes_ZOMBIE
)

// qkdn_status.
const (
	NodeNew       = etsi015.EtsiQkdNodeTypes_QkdnStatusTypes_NEW
	NodeOperating = etsi015.EtsiQkdNodeTypes_QkdnStatusTypes_OPERATING
	NodeDown      = etsi015.EtsiQkdNodeTypes_QkdnStatusTypes_DOWN
	NodeFailure   = etsi015.EtsiQkdNodeTypes_QkdnStatusTypes_FAILURE
	NodeOut       = etsi015.EtsiQkdNodeTypes_QkdnStatusTypes_OUT
)

// phys_qkd_role and qkdi_capabilities/role_support.
const (
	Transmitter = etsi015.EtsiQkdNodeTypes_QkdRoleTypes_TRANSMITTER
	Receiver    = etsi015.EtsiQkdNodeTypes_QkdRoleTypes_RECEIVER
	Transceiver = etsi015.EtsiQkdNodeTypes_QkdRoleTypes_TRANSCEIVER
)

// qkdi_type.
const (
	TechCVQKD    = etsi015.EtsiQkdNodeTypes_QkdTechnologyTypes_CV_QKD
	TechDVQKD    = etsi015.EtsiQkdNodeTypes_QkdTechnologyTypes_DV_QKD
	TechDVQKDCOW = etsi015.EtsiQkdNodeTypes_QkdTechnologyTypes_DV_QKD_COW
	TechDVQKD2Ws = etsi015.EtsiQkdNodeTypes_QkdTechnologyTypes_DV_QKD_2Ws
)

// qkdi_status.
const (
	IfaceEnabled  = etsi015.EtsiQkdNodeTypes_IfaceStatusTypes_ENABLED
	IfaceDisabled = etsi015.EtsiQkdNodeTypes_IfaceStatusTypes_DISABLED
	IfaceFailed   = etsi015.EtsiQkdNodeTypes_IfaceStatusTypes_FAILED
)

// qkdl_performance/phys_perf perf_type.
const (
	PerfQBER = etsi015.EtsiQkdNodeTypes_PhysPerfTypes_QBER
	PerfSNR  = etsi015.EtsiQkdNodeTypes_PhysPerfTypes_SNR
)

// kmm_role of a link and role of a hop (qkdnet-sdn-ext).
const (
	RoleMaster = etsi015.QkdnetSdnExt_KmmRole_MASTER // allocates the link's keys to key streams
	RoleSlave  = etsi015.QkdnetSdnExt_KmmRole_SLAVE  // mirrors the Master's allocations
)

// NewNode returns an empty qkd_node with qkdn_id set.
func NewNode(qkdnID string) *Node {
	return &Node{QkdnId: ygot.String(qkdnID)}
}

// EnumName returns the YANG name of an enumerated value ("PHYS", "MASTER",
// "OUT-OF-TIME") and false when e is unset or not a value of its type.
func EnumName(e ygot.GoEnum) (string, bool) {
	v := reflect.ValueOf(e)
	if v.Kind() != reflect.Int64 || v.Int() == 0 {
		return "", false
	}
	d, ok := e.ΛMap()[v.Type().Name()][v.Int()]
	return d.Name, ok
}

// ParseEnum sets *dst to the value of its type named name (a YANG name such as
// "PHYS" or "MASTER"; an identity may carry its module, "etsi-qkd-node-types:PHYS")
// and reports whether there is one.
func ParseEnum[E interface {
	ygot.GoEnum
	~int64
}](name string, dst *E) bool {
	var zero E
	defs := zero.ΛMap()[reflect.TypeOf(zero).Name()]
	for v, d := range defs {
		if d.Name == name || (d.DefiningModule != "" && d.DefiningModule+":"+d.Name == name) {
			*dst = E(v)
			return true
		}
	}
	return false
}
