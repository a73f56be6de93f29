package qkd015

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// UUIDv5 namespaces of the identifiers this package derives. Each is
// uuid.NewSHA1(uuid.NameSpaceURL, "https://github.com/qkdnet/qkdnet/qkd015#<kind>")
// (TestNamespaces checks it). Never change them: every identifier a deployment
// has stored derives from them.
var (
	nodeNamespace = uuid.MustParse("dcb6bc41-e216-5944-bf1d-95f7db99e02f")
	linkNamespace = uuid.MustParse("323dfa4c-122c-5f76-91d0-caecb8d17e6d")
	appNamespace  = uuid.MustParse("fcc78ae0-b2b4-5446-a910-b0b25db77238")
)

// NodeID returns the qkdn_id of the node named name (the topology's short
// name, e.g. "A"): the same string on every call and every controller replica.
func NodeID(name string) string {
	return uuid.NewSHA1(nodeNamespace, []byte(name)).String()
}

// LinkID returns the qkdl_id of the link named name (e.g. "FSO_AB"). Both ends
// of a link use the same qkdl_id, so the link's name, not a node, names it.
func LinkID(name string) string {
	return uuid.NewSHA1(linkNamespace, []byte(name)).String()
}

// AppID returns the app_id of the key stream from masterSAE (the server SAE,
// the one that calls enc_keys) to slaveSAE. The direction matters:
// AppID(a, b) != AppID(b, a).
func AppID(masterSAE, slaveSAE string) string {
	// Length-prefixed so that no two (master, slave) pairs share a name.
	name := strconv.Itoa(len(masterSAE)) + ":" + masterSAE + slaveSAE
	return uuid.NewSHA1(appNamespace, []byte(name)).String()
}

const saeURIPrefix = "qkd://sae/"

// SAEURI returns the inet:uri that names an SAE in server_app_id and
// client_app_id: "qkd://sae/<id>", the id path-escaped (an ordinary SAE_ID such
// as "SAE_A" is written as is).
func SAEURI(saeID string) string {
	return saeURIPrefix + url.PathEscape(saeID)
}

// SAEFromURI returns the SAE_ID in a URI made by SAEURI, and false for any
// other string (including other spellings of the same URI, so that URIs can be
// compared as strings).
func SAEFromURI(uri string) (string, bool) {
	rest, ok := strings.CutPrefix(uri, saeURIPrefix)
	if !ok || rest == "" || strings.Contains(rest, "/") {
		return "", false
	}
	id, err := url.PathUnescape(rest)
	if err != nil || id == "" || SAEURI(id) != uri {
		return "", false // not ours, or not in SAEURI's (only) spelling
	}
	return id, true
}
