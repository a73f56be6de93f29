package chart

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/qkdnet/qkdnet/agent"
	"github.com/qkdnet/qkdnet/controller/daemon"
	"github.com/qkdnet/qkdnet/testbed"
)

var update = flag.Bool("update", false, "rewrite the renders in deploy/k8s")

const chartDir = "../helm/qkdnet"

var rel = Release{Name: "qkdnet", Namespace: "qkdnet"}

// renders are the committed manifests: deploy/k8s/<name> is the chart
// rendered with these values files.
var renders = []struct {
	name   string
	values []string
	// controllers and nodes are what the values ask for.
	controllers int
	nodes       []string
}{
	{"qkdnet.yaml", nil, 3, []string{"A", "B"}},
	{"qkdnet-rooftops.yaml", []string{chartDir + "/values-rooftops.yaml"}, 5, []string{"A", "B", "C"}},
}

// TestRendersFresh: deploy/k8s holds what the chart renders now. With
// -update (make k8s-manifests) it rewrites them instead.
func TestRendersFresh(t *testing.T) {
	for _, r := range renders {
		got, err := Render(chartDir, rel, r.values...)
		if err != nil {
			t.Fatal(err)
		}
		got = append([]byte(header(r.values)), got...)
		file := filepath.Join("..", "k8s", r.name)
		if *update {
			if err := os.WriteFile(file, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%v (run make k8s-manifests)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("deploy/k8s/%s is stale: run make k8s-manifests and commit it", r.name)
		}
	}
}

func header(values []string) string {
	v := "its default values"
	if len(values) > 0 {
		v = "-f " + strings.TrimPrefix(strings.Join(values, " -f "), "../helm/")
	}
	return fmt.Sprintf("# Rendered from deploy/helm/qkdnet (release %q, namespace %q) with %s\n# by `make k8s-manifests`. Do not edit: change the chart and re-render.\n", rel.Name, rel.Namespace, v)
}

// objects is one render decoded.
type objects struct {
	statefulSets map[string]*appsv1.StatefulSet
	services     map[string]*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	pvs          map[string]*corev1.PersistentVolume
	pvcs         map[string]*corev1.PersistentVolumeClaim
	pdbs         map[string]*policyv1.PodDisruptionBudget
	classes      map[string]*storagev1.StorageClass
}

// decode decodes every document strictly: an unknown or duplicate field, or
// a kind the chart is not expected to make, fails.
func decode(t tb, render []byte) *objects {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, storagev1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatalf("%v", err)
		}
	}
	dec := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	o := &objects{map[string]*appsv1.StatefulSet{}, map[string]*corev1.Service{}, map[string]*corev1.ConfigMap{},
		map[string]*corev1.PersistentVolume{}, map[string]*corev1.PersistentVolumeClaim{}, map[string]*policyv1.PodDisruptionBudget{},
		map[string]*storagev1.StorageClass{}}
	for _, doc := range Docs(render) {
		obj, gvk, err := dec.Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%v in\n%s", err, doc)
		}
		var name string
		switch v := obj.(type) {
		case *appsv1.StatefulSet:
			name, o.statefulSets[v.Name] = v.Name, v
		case *corev1.Service:
			name, o.services[v.Name] = v.Name, v
		case *corev1.ConfigMap:
			name, o.configMaps[v.Name] = v.Name, v
		case *corev1.PersistentVolume:
			name, o.pvs[v.Name] = v.Name, v
		case *corev1.PersistentVolumeClaim:
			name, o.pvcs[v.Name] = v.Name, v
		case *policyv1.PodDisruptionBudget:
			name, o.pdbs[v.Name] = v.Name, v
		case *storagev1.StorageClass:
			name, o.classes[v.Name] = v.Name, v
		default:
			t.Fatalf("unexpected kind %v", gvk)
		}
		if name == "" {
			t.Fatalf("%v without a name", gvk)
		}
	}
	return o
}

func TestChartInvariants(t *testing.T) {
	ctlFlags := flagsOf(t, func(w *bytes.Buffer) int { return daemon.Main("qkd-controller", []string{"--help"}, w) })
	agentFlags := flagsOf(t, func(w *bytes.Buffer) int { return testbed.AgentMain("qkd-agent", []string{"--help"}, w) })
	for _, r := range renders {
		t.Run(r.name, func(t *testing.T) {
			render, err := Render(chartDir, rel, r.values...)
			if err != nil {
				t.Fatal(err)
			}
			o := decode(t, render)
			for _, s := range o.statefulSets {
				checkPod(t, s, o)
			}
			ctlAddrs := checkController(t, o, r.controllers, ctlFlags)
			checkAgents(t, o, r.nodes, ctlAddrs, agentFlags)
		})
	}
}

// flagsOf is the set of flags a command's --help lists.
func flagsOf(t *testing.T, help func(*bytes.Buffer) int) map[string]bool {
	var b bytes.Buffer
	if code := help(&b); code != 0 {
		t.Fatalf("--help: exit %d: %s", code, b.String())
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z][a-z-]*)`).FindAllStringSubmatch(b.String(), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 3 {
		t.Fatalf("no flags in --help:\n%s", b.String())
	}
	return flags
}

// checkArgs: every --flag a container passes is one its binary has.
func checkArgs(t tb, who string, args []string, flags map[string]bool) {
	t.Helper()
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !flags[name] {
			t.Errorf("%s: argument %q is not a flag of the binary", who, a)
		}
	}
}

// checkPod holds what every workload must: probes that mean something,
// resources, a non-root read-only container without capabilities, and
// references (ports, volumes, Secrets, claims, config maps) that resolve.
func checkPod(t tb, s *appsv1.StatefulSet, o *objects) {
	t.Helper()
	spec := s.Spec.Template.Spec
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("%s: pod does not run as a non-root user", s.Name)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: mounts a service account token it does not need", s.Name)
	}
	if !equalMaps(s.Spec.Selector.MatchLabels, subset(s.Spec.Template.Labels, s.Spec.Selector.MatchLabels)) {
		t.Errorf("%s: selector %v does not match its pods %v", s.Name, s.Spec.Selector.MatchLabels, s.Spec.Template.Labels)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
		switch {
		case v.Secret != nil:
			var keys []string
			for _, it := range v.Secret.Items {
				keys = append(keys, it.Key)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, []string{"ca.crt", "tls.crt", "tls.key"}) {
				t.Errorf("%s: secret volume %s takes keys %v, want cert-manager's ca.crt, tls.crt, tls.key", s.Name, v.Name, keys)
			}
			if !strings.HasSuffix(v.Secret.SecretName, "-tls") {
				t.Errorf("%s: secret %s is not named <owner>-tls", s.Name, v.Secret.SecretName)
			}
		case v.PersistentVolumeClaim != nil:
			if o.pvcs[v.PersistentVolumeClaim.ClaimName] == nil {
				t.Errorf("%s: claim %s is not in the chart", s.Name, v.PersistentVolumeClaim.ClaimName)
			}
		case v.ConfigMap != nil:
			if o.configMaps[v.ConfigMap.Name] == nil {
				t.Errorf("%s: config map %s is not in the chart", s.Name, v.ConfigMap.Name)
			}
		}
	}
	for _, vct := range s.Spec.VolumeClaimTemplates {
		vols[vct.Name] = corev1.Volume{Name: vct.Name}
	}
	if len(spec.InitContainers) > 0 {
		t.Errorf("%s: init containers are not expected", s.Name)
	}
	for _, c := range spec.Containers {
		who := s.Name + "/" + c.Name
		ports := map[string]bool{}
		for _, p := range c.Ports {
			ports[p.Name] = true
		}
		for _, pr := range []struct {
			kind string
			p    *corev1.Probe
			path string
		}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
			if pr.p == nil || pr.p.HTTPGet == nil {
				t.Errorf("%s: no HTTP %s probe", who, pr.kind)
				continue
			}
			if pr.p.HTTPGet.Path != pr.path || !ports[pr.p.HTTPGet.Port.StrVal] {
				t.Errorf("%s: %s probe %s on port %v, want %s on a named port of the container", who, pr.kind, pr.p.HTTPGet.Path, pr.p.HTTPGet.Port, pr.path)
			}
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[res]; !ok {
				t.Errorf("%s: no %s request", who, res)
			}
			if _, ok := c.Resources.Limits[res]; !ok {
				t.Errorf("%s: no %s limit", who, res)
			}
		}
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s: no security context", who)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s: root filesystem is writable", who)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s: may escalate privileges", who)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("%s: capabilities %v, want all dropped", who, sc.Capabilities)
		case sc.Privileged != nil && *sc.Privileged:
			t.Errorf("%s: privileged", who)
		}
		// Read-only root: the only writable place is the state volume.
		var state bool
		for _, m := range c.VolumeMounts {
			if _, ok := vols[m.Name]; !ok {
				t.Errorf("%s: mounts unknown volume %s", who, m.Name)
			}
			if m.MountPath == "/var/lib/qkdnet" && !m.ReadOnly {
				state = true
			} else if !m.ReadOnly {
				t.Errorf("%s: %s is mounted writable", who, m.MountPath)
			}
		}
		if !state {
			t.Errorf("%s: no state volume at /var/lib/qkdnet", who)
		}
	}
}

func subset(m, keys map[string]string) map[string]string {
	out := map[string]string{}
	for k := range keys {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// selects lists the StatefulSets whose pods a selector picks.
func selects(o *objects, sel map[string]string) []string {
	var out []string
	for name, s := range o.statefulSets {
		if len(sel) > 0 && equalMaps(sel, subset(s.Spec.Template.Labels, sel)) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// checkServicePorts: every service port targets a named port of the pods
// it selects.
func checkServicePorts(t tb, svc *corev1.Service, s *appsv1.StatefulSet) {
	t.Helper()
	names := map[string]bool{}
	for _, c := range s.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			names[p.Name] = true
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.TargetPort.Type != intstr.String || !names[p.TargetPort.StrVal] {
			t.Errorf("service %s port %s targets %v, not a named port of %s", svc.Name, p.Name, p.TargetPort, s.Name)
		}
	}
}

func checkController(t tb, o *objects, replicas int, flags map[string]bool) []string {
	t.Helper()
	const name = "qkdnet-controller"
	s := o.statefulSets[name]
	if s == nil {
		t.Fatalf("no StatefulSet %s", name)
	}
	if s.Spec.Replicas == nil || int(*s.Spec.Replicas) != replicas {
		t.Errorf("controller replicas %v, want %d", s.Spec.Replicas, replicas)
	}
	if s.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("controller pods start %q: after a full stop, ordered start waits for a replica that cannot be ready alone", s.Spec.PodManagementPolicy)
	}
	peers := o.services[s.Spec.ServiceName]
	if peers == nil || peers.Spec.ClusterIP != corev1.ClusterIPNone || !peers.Spec.PublishNotReadyAddresses {
		t.Fatalf("controller service %q is not a headless service publishing not-ready replicas", s.Spec.ServiceName)
	}
	if got := selects(o, peers.Spec.Selector); !slices.Equal(got, []string{name}) {
		t.Errorf("headless service selects %v", got)
	}
	client := o.services[name]
	if client == nil {
		t.Fatalf("no client service %s", name)
	}
	if got := selects(o, client.Spec.Selector); !slices.Equal(got, []string{name}) {
		t.Errorf("client service selects %v", got)
	}
	checkServicePorts(t, peers, s)
	checkServicePorts(t, client, s)
	var hasGNMI bool
	for _, p := range client.Spec.Ports {
		hasGNMI = hasGNMI || p.Name == "gnmi"
	}
	if !hasGNMI {
		t.Errorf("the controller service has no gnmi port")
	}

	// Raft data on a claim per replica, at the data dir.
	if len(s.Spec.VolumeClaimTemplates) != 1 || s.Spec.VolumeClaimTemplates[0].Name != "data" {
		t.Errorf("controller volume claim templates %v, want one named data", s.Spec.VolumeClaimTemplates)
	}

	// Replicas on different machines, and disruptions keep a quorum.
	aff := s.Spec.Template.Spec.Affinity
	if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatalf("controller has no required pod anti-affinity")
	}
	term := aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0]
	if term.TopologyKey != "kubernetes.io/hostname" || !equalMaps(term.LabelSelector.MatchLabels, subset(s.Spec.Template.Labels, term.LabelSelector.MatchLabels)) || len(term.LabelSelector.MatchLabels) == 0 {
		t.Errorf("anti-affinity %+v does not keep replicas on different hosts", term)
	}
	pdb := o.pdbs[name]
	if pdb == nil || pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != replicas/2+1 {
		t.Errorf("controller PDB %+v, want minAvailable %d (a quorum)", pdb, replicas/2+1)
	} else if got := selects(o, pdb.Spec.Selector.MatchLabels); !slices.Equal(got, []string{name}) {
		t.Errorf("PDB selects %v", got)
	}

	// The command line: real flags; replica 0 bootstraps, all join through
	// every replica's stable name; each picks its own certificate.
	c := s.Spec.Template.Spec.Containers[0]
	checkArgs(t, "controller", c.Args, flags)
	arg := func(flag string) string {
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--"+flag+"="); ok {
				return v
			}
		}
		t.Errorf("controller has no --%s", flag)
		return ""
	}
	domain := fmt.Sprintf("%s.%s.svc.cluster.local", peers.Name, rel.Namespace)
	var addrs []string
	for i := range replicas {
		addrs = append(addrs, fmt.Sprintf("%s-%d.%s:7443", name, i, domain))
	}
	if arg("id") != "$(POD_NAME)" || arg("bootstrap-id") != name+"-0" || arg("join") != strings.Join(addrs, ",") {
		t.Errorf("controller identity: --id %s --bootstrap-id %s --join %s", arg("id"), arg("bootstrap-id"), arg("join"))
	}
	if arg("grpc") != "$(POD_NAME)."+domain+":7443" || arg("raft") != "$(POD_NAME)."+domain+":7543" {
		t.Errorf("controller addresses are not the pod's stable name: --grpc %s --raft %s", arg("grpc"), arg("raft"))
	}
	if !strings.HasPrefix(arg("data-dir"), "/var/lib/qkdnet/") {
		t.Errorf("--data-dir %s is not on the data volume", arg("data-dir"))
	}
	var podName bool
	for _, e := range c.Env {
		podName = podName || e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
	}
	if !podName {
		t.Errorf("POD_NAME is not the pod's name")
	}
	// Each replica's Secret is mounted where $(POD_NAME) finds it.
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	secrets := map[string]string{}
	for _, v := range s.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			secrets[mounts[v.Name]] = v.Secret.SecretName
		}
	}
	for i := range replicas {
		pod := fmt.Sprintf("%s-%d", name, i)
		dir := "/etc/qkdnet/tls/" + pod
		if secrets[dir] != pod+"-tls" {
			t.Errorf("replica %s: %s holds secret %q, want %s-tls", pod, dir, secrets[dir], pod)
		}
		for _, f := range []string{"ca", "cert", "key"} {
			if p := strings.ReplaceAll(arg(f), "$(POD_NAME)", pod); !strings.HasPrefix(p, dir+"/") {
				t.Errorf("replica %s: --%s %s is not in its secret", pod, f, p)
			}
		}
	}
	if len(secrets) != replicas {
		t.Errorf("controller mounts %d secrets, want %d", len(secrets), replicas)
	}
	return addrs
}

func checkAgents(t tb, o *objects, nodes []string, ctlAddrs []string, flags map[string]bool) {
	t.Helper()
	var agents []string
	for name := range o.statefulSets {
		if strings.HasPrefix(name, "qkdnet-agent-") {
			agents = append(agents, name)
		}
	}
	if len(agents) != len(nodes) {
		t.Errorf("agents %v, want one per node %v", agents, nodes)
	}
	for _, node := range nodes {
		name := "qkdnet-agent-" + strings.ToLower(node)
		s := o.statefulSets[name]
		if s == nil {
			t.Errorf("node %s has no agent %s", node, name)
			continue
		}
		if s.Spec.Replicas == nil || *s.Spec.Replicas != 1 {
			t.Errorf("%s: replicas %v, want exactly one pod on the key store", name, s.Spec.Replicas)
		}
		spec := s.Spec.Template.Spec
		host := spec.NodeSelector["kubernetes.io/hostname"]
		if host == "" {
			t.Errorf("%s: not pinned to its machine", name)
		}
		peers := o.services[s.Spec.ServiceName]
		if peers == nil || peers.Spec.ClusterIP != corev1.ClusterIPNone || !peers.Spec.PublishNotReadyAddresses {
			t.Errorf("%s: service %q is not headless", name, s.Spec.ServiceName)
		}

		// The key store: a local PV on that machine, bound by name.
		var claim string
		for _, v := range spec.Volumes {
			if v.Name == "keystore" && v.PersistentVolumeClaim != nil {
				claim = v.PersistentVolumeClaim.ClaimName
			}
		}
		pvc := o.pvcs[claim]
		if pvc == nil {
			t.Errorf("%s: no key store claim", name)
			continue
		}
		pv := o.pvs[pvc.Spec.VolumeName]
		switch {
		case pv == nil:
			t.Errorf("%s: claim %s is not bound to a volume of the chart", name, claim)
			continue
		case pv.Spec.Local == nil || pv.Spec.Local.Path == "":
			t.Errorf("%s: key store volume %s is not a local volume", name, pv.Name)
		case pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain:
			t.Errorf("%s: key store volume is reclaimed %q", name, pv.Spec.PersistentVolumeReclaimPolicy)
		case pv.Spec.StorageClassName != *pvc.Spec.StorageClassName:
			t.Errorf("%s: volume class %q, claim class %q", name, pv.Spec.StorageClassName, *pvc.Spec.StorageClassName)
		}
		if sc := o.classes[pv.Spec.StorageClassName]; sc != nil && sc.Provisioner != "kubernetes.io/no-provisioner" {
			t.Errorf("%s: storage class %s provisions volumes (%s): keys could land on network storage", name, sc.Name, sc.Provisioner)
		}
		na := pv.Spec.NodeAffinity
		if na == nil || na.Required == nil || len(na.Required.NodeSelectorTerms) != 1 ||
			len(na.Required.NodeSelectorTerms[0].MatchExpressions) != 1 {
			t.Errorf("%s: key store volume is not pinned to a node", name)
		} else if e := na.Required.NodeSelectorTerms[0].MatchExpressions[0]; e.Key != "kubernetes.io/hostname" || e.Operator != corev1.NodeSelectorOpIn || !slices.Equal(e.Values, []string{host}) {
			t.Errorf("%s: key store volume on %v, agent on %s", name, e, host)
		}

		// Its configuration is a valid agent.Config (strictly: no field
		// the agent would ignore) matching the pod.
		c := spec.Containers[0]
		checkArgs(t, name, c.Args, flags)
		cm := o.configMaps[name]
		if cm == nil {
			t.Errorf("%s: no config map", name)
			continue
		}
		var cfg agent.Config
		d := json.NewDecoder(strings.NewReader(cm.Data["agent.json"]))
		d.DisallowUnknownFields()
		if err := d.Decode(&cfg); err != nil {
			t.Errorf("%s: agent.json: %v", name, err)
			continue
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: agent.json: %v", name, err)
		}
		if cfg.Node != node || !slices.Equal(cfg.Controllers, ctlAddrs) {
			t.Errorf("%s: config for node %s with controllers %v", name, cfg.Node, cfg.Controllers)
		}
		if want := fmt.Sprintf("%s-0.%s.%s.svc.cluster.local:9443", name, peers.Name, rel.Namespace); cfg.GRPCAddr != want {
			t.Errorf("%s: grpc_addr %s, want the pod's stable name %s", name, cfg.GRPCAddr, want)
		}
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			mounts[m.Name] = m.MountPath
		}
		if !strings.HasPrefix(cfg.DataDir, mounts["keystore"]+"/") {
			t.Errorf("%s: data_dir %s is not on the key store volume (%s)", name, cfg.DataDir, mounts["keystore"])
		}
		for _, f := range []string{cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key} {
			if filepath.Dir(f) != mounts["tls"] {
				t.Errorf("%s: %s is not in the mounted secret (%s)", name, f, mounts["tls"])
			}
		}
		if !slices.Contains(c.Args, "--config="+mounts["config"]+"/agent.json") {
			t.Errorf("%s: --config is not the mounted agent.json", name)
		}
		for _, v := range spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName != name+"-tls" {
				t.Errorf("%s: mounts secret %s, want only its own %s-tls", name, v.Secret.SecretName, name)
			}
		}

		// The SAE API, gNMI and metrics, to this node's agent only.
		svc := o.services[name]
		if svc == nil {
			t.Errorf("%s: no service", name)
			continue
		}
		if got := selects(o, svc.Spec.Selector); !slices.Equal(got, []string{name}) {
			t.Errorf("%s: service selects %v", name, got)
		}
		checkServicePorts(t, svc, s)
		var ports []string
		for _, p := range svc.Spec.Ports {
			ports = append(ports, p.Name)
		}
		slices.Sort(ports)
		if !slices.Equal(ports, []string{"etsi014", "gnmi", "grpc", "metrics"}) {
			t.Errorf("%s: service ports %v", name, ports)
		}
	}
}

// Bad values fail the render with a message rather than render something
// that cannot work.
func TestRenderRefuses(t *testing.T) {
	for _, tc := range []struct{ name, values, want string }{
		{"even replicas", "controller: {replicas: 4}", "must be odd"},
		{"bad anti-affinity", "controller: {antiAffinity: sometimes}", "required or preferred"},
		{"node without machine", "topology: {nodes: [{id: A, keyStore: {path: /x, size: 1Gi}}]}", "kubernetesNode is required"},
		{"node id not a DNS label", "topology: {nodes: [{id: 'A B', kubernetesNode: w, keyStore: {path: /x, size: 1Gi}}]}", "cannot name a Kubernetes object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "values.yaml")
			if err := os.WriteFile(f, []byte(tc.values), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Render(chartDir, rel, f)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("render: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// The invariant checks can fail: a render that breaks one is caught.
func TestInvariantsCatchBreakage(t *testing.T) {
	render, err := Render(chartDir, rel)
	if err != nil {
		t.Fatal(err)
	}
	ctlFlags := map[string]bool{}
	for _, f := range []string{"id", "bootstrap-id", "join", "grpc", "raft", "metrics", "data-dir", "ca", "cert", "key", "snapshot-threshold", "log-level", "log-format"} {
		ctlFlags[f] = true
	}
	agentFlags := map[string]bool{"config": true, "log-level": true, "log-format": true}
	check := func(render []byte) []string {
		r := &recorder{}
		func() {
			defer func() {
				if v := recover(); v != nil && v != r {
					panic(v)
				}
			}()
			o := decode(r, render)
			for _, s := range o.statefulSets {
				checkPod(r, s, o)
			}
			addrs := checkController(r, o, 3, ctlFlags)
			checkAgents(r, o, []string{"A", "B"}, addrs, agentFlags)
		}()
		return r.errs
	}
	if errs := check(render); len(errs) > 0 {
		t.Fatalf("the chart as it is: %v", errs)
	}
	for _, tc := range []struct{ name, old, new string }{
		{"writable root", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"},
		{"root user", "runAsUser: 65532", "runAsUser: 0"},
		{"no readiness", "readinessProbe:", "startupProbe:"},
		{"kept capabilities", `drop: ["ALL"]`, `drop: ["NET_RAW"]`},
		{"unknown field", "publishNotReadyAddresses: true", "publishNotReadyAddresses: true\n  bogus: 1"},
		{"no anti-affinity", "requiredDuringSchedulingIgnoredDuringExecution", "preferredDuringSchedulingIgnoredDuringExecution"},
		{"secret renamed", "secretName: qkdnet-agent-a-tls", "secretName: node-a"},
		{"key store off its node", `values: ["worker1"]`, `values: ["worker2"]`},
		{"not a flag", "--bootstrap-id=", "--bootstrap-if="},
		{"agent config field", `"data_dir"`, `"datadir"`},
		{"no limits", "limits:", "limitz:"},
		{"ordered start", "podManagementPolicy: Parallel", "podManagementPolicy: OrderedReady"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Contains(render, []byte(tc.old)) {
				t.Fatalf("render has no %q", tc.old)
			}
			if errs := check(bytes.Replace(render, []byte(tc.old), []byte(tc.new), 1)); len(errs) == 0 {
				t.Errorf("replacing %q with %q went unnoticed", tc.old, tc.new)
			}
		})
	}
}

// tb is what the checks need of a *testing.T.
type tb interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// recorder is a tb that keeps the failures (Fatalf panics with itself).
type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	panic(r)
}
