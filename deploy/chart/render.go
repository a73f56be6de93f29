// Package chart renders the qkdnet Helm chart (deploy/helm/qkdnet) with the
// Helm library, as `helm template` would, without a cluster or a helm
// binary. Its tests decode every rendered object strictly with the
// Kubernetes API types and hold the chart's invariants; the plain manifests
// in deploy/k8s are its renders, kept fresh by those tests (`make
// k8s-manifests` rewrites them).
package chart

import (
	"bytes"
	"fmt"
	"path"
	"slices"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
)

// Release names the release a render is for.
type Release struct {
	Name, Namespace string
}

// Render renders the chart in dir with its values.yaml overridden by the
// values files, in order (as helm's -f), and returns the manifests as one
// YAML stream: every non-empty template in name order, each document under
// a "# Source:" comment as `helm template` writes it. NOTES.txt is left out.
func Render(dir string, rel Release, valuesFiles ...string) ([]byte, error) {
	ch, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart: %w", err)
	}
	vals := map[string]any{}
	for _, f := range valuesFiles {
		v, err := chartutil.ReadValuesFile(f)
		if err != nil {
			return nil, err
		}
		vals = chartutil.CoalesceTables(v.AsMap(), vals)
	}
	if err := chartutil.ValidateAgainstSchema(ch, vals); err != nil {
		return nil, err
	}
	top, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{
		Name: rel.Name, Namespace: rel.Namespace, Revision: 1, IsInstall: true,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	out, err := engine.Render(ch, top)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(out))
	for name := range out {
		if path.Ext(name) == ".yaml" || path.Ext(name) == ".yml" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var b bytes.Buffer
	for _, name := range names {
		for _, doc := range splitDocs(out[name]) {
			fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", name, doc)
		}
	}
	return b.Bytes(), nil
}

// splitDocs splits a YAML stream at its "---" lines, dropping documents
// that hold only comments and blank lines.
func splitDocs(s string) []string {
	var docs []string
	for _, d := range strings.Split("\n"+s, "\n---") {
		d = strings.TrimSpace(d)
		empty := true
		for _, line := range strings.Split(d, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if !empty {
			docs = append(docs, d)
		}
	}
	return docs
}

// Docs splits a render into its documents.
func Docs(render []byte) []string {
	return splitDocs(string(render))
}
