// Package image checks deploy/Dockerfile without a Docker engine. Lint
// holds the file to the rules the image must keep (pinned bases, an
// unprivileged user, state only under a volume, no downloads, static
// binaries); GoBuild reads its go build command, so that a test can run the
// very same build and inspect what it makes.
package image

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// StateDir is where the binaries keep state in the image; the final stage
// must declare it a volume (the chart mounts one there), so that the root
// filesystem can be read-only.
const StateDir = "/var/lib/qkdnet"

// Build is the go build command of the Dockerfile.
type Build struct {
	// Env is the environment the command runs with, from ENV instructions
	// of its stage (and the stages it is built on) and inline assignments.
	Env []string
	// Flags are its flags, in order, without -o and its value.
	Flags []string
	// Packages are the packages it builds.
	Packages []string
}

// file is a parsed Dockerfile.
type file struct {
	stages []instructions.Stage
}

func parse(src []byte) (*file, error) {
	res, err := parser.Parse(bytes.NewReader(src))
	if err != nil {
		return nil, fmt.Errorf("dockerfile: %w", err)
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return nil, fmt.Errorf("dockerfile: %w", err)
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("dockerfile: no FROM")
	}
	return &file{stages: stages}, nil
}

// exactTag is a tag that names one release (1.26.8, 1.26.8-bookworm), not
// a moving one (latest, 1.26, bookworm).
var exactTag = regexp.MustCompile(`^v?[0-9]+\.[0-9]+\.[0-9]+([-.+][A-Za-z0-9.-]+)?$`)

var digest = regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)

// pinned says why a base image reference is not pinned, or "" if it is.
func pinned(ref string) string {
	if strings.Contains(ref, "$") {
		return "is not a literal reference (ARG substitution cannot be checked)"
	}
	if digest.MatchString(ref) {
		return ""
	}
	name := ref[strings.LastIndex(ref, "/")+1:]
	i := strings.LastIndex(name, ":")
	if i < 0 {
		return "has no tag or digest"
	}
	if tag := name[i+1:]; !exactTag.MatchString(tag) {
		return fmt.Sprintf("tag %q is not an exact release (want e.g. 1.26.8-bookworm, or @sha256:...)", tag)
	}
	return ""
}

// imageName is ref without registry, tag or digest.
func imageName(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	name := ref[strings.LastIndex(ref, "/")+1:]
	name, _, _ = strings.Cut(name, ":")
	return name
}

// goImage is the Go toolchain image and its version tag.
var goImage = regexp.MustCompile(`^(?:docker\.io/)?(?:library/)?golang:([0-9]+\.[0-9]+(?:\.[0-9]+)?)`)

// Lint returns every rule src breaks, one line each, naming the line.
// goVersion is go.mod's go directive: the Go image must be that release.
func Lint(src []byte, goVersion string) ([]string, error) {
	f, err := parse(src)
	if err != nil {
		return nil, err
	}
	var problems []string
	report := func(loc []parser.Range, format string, args ...any) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		problems = append(problems, fmt.Sprintf("line %d: ", line)+fmt.Sprintf(format, args...))
	}
	named := map[string]bool{}
	for i, st := range f.stages {
		base := strings.ToLower(st.BaseName)
		switch {
		case named[base]:
		case base == "scratch":
		default:
			if why := pinned(st.BaseName); why != "" {
				report(st.Location, "base image %s %s", st.BaseName, why)
			}
			if m := goImage.FindStringSubmatch(st.BaseName); m != nil && m[1] != goVersion {
				report(st.Location, "Go image %s is not go.mod's Go %s", st.BaseName, goVersion)
			} else if m == nil && strings.HasPrefix(imageName(st.BaseName), "golang") {
				report(st.Location, "Go image %s names no Go version: tag it (golang:%s-...@sha256:...)", st.BaseName, goVersion)
			}
		}
		if i < len(f.stages)-1 && st.Name == "" {
			report(st.Location, "stage %d has no name (COPY --from must name a stage)", i)
		}
		for _, c := range st.Commands {
			switch c := c.(type) {
			case *instructions.AddCommand:
				for _, s := range c.SourcePaths {
					if strings.Contains(s, "://") || strings.HasPrefix(s, "git@") {
						report(c.Location(), "ADD of a remote source %s: fetch nothing at build time that is not pinned and verified", s)
					}
				}
			case *instructions.CopyCommand:
				if c.From != "" && !named[strings.ToLower(c.From)] {
					report(c.Location(), "COPY --from=%s: not an earlier named stage", c.From)
				}
			}
		}
		if st.Name != "" {
			named[strings.ToLower(st.Name)] = true
		}
	}

	final := f.stages[len(f.stages)-1]
	var user string
	var userLoc []parser.Range
	var volumes []string
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user, userLoc = c.User, c.Location()
		case *instructions.VolumeCommand:
			volumes = append(volumes, c.Volumes...)
		}
	}
	if user == "" {
		report(final.Location, "the final stage sets no USER: it would run as root")
	} else {
		uid, gid, _ := strings.Cut(user, ":")
		if uid == "0" || uid == "root" || gid == "0" || gid == "root" {
			report(userLoc, "USER %s is root", user)
		} else if strings.Trim(uid, "0123456789") != "" {
			// scratch and distroless have no useradd; a name needs an
			// /etc/passwd the check cannot see, and Kubernetes'
			// runAsNonRoot can only verify a numeric user.
			report(userLoc, "USER %s is not numeric", user)
		}
	}
	if !slices.Contains(volumes, StateDir) {
		report(final.Location, "the final stage does not declare VOLUME %s (state must live only there)", StateDir)
	}

	b, loc, err := f.goBuild()
	if err != nil {
		problems = append(problems, err.Error())
		return problems, nil
	}
	if v, _ := envList(b.Env).Get("CGO_ENABLED"); v != "0" {
		report(loc, "go build runs without CGO_ENABLED=0: the binaries would not be static")
	}
	if !slices.Contains(b.Flags, "-trimpath") {
		report(loc, "go build runs without -trimpath")
	}
	for _, p := range b.Packages {
		if !strings.HasPrefix(p, "./cmd/") {
			report(loc, "go build of %s: only ./cmd/... binaries belong in the image", p)
		}
	}
	return problems, nil
}

// GoBuild returns the Dockerfile's go build command.
func GoBuild(src []byte) (Build, error) {
	f, err := parse(src)
	if err != nil {
		return Build{}, err
	}
	b, _, err := f.goBuild()
	return b, err
}

// goBuild finds the one RUN with a go build and splits it as the shell
// would.
func (f *file) goBuild() (Build, []parser.Range, error) {
	var found []Build
	var loc []parser.Range
	env := map[string][]string{} // per stage name, inherited by stages built on it
	for _, st := range f.stages {
		stageEnv := slices.Clone(env[strings.ToLower(st.BaseName)])
		for _, c := range st.Commands {
			switch c := c.(type) {
			case *instructions.EnvCommand:
				for _, kv := range c.Env {
					stageEnv = append(stageEnv, kv.Key+"="+kv.Value)
				}
			case *instructions.RunCommand:
				line := strings.Join(c.CmdLine, " ")
				if !strings.Contains(line, "go build") {
					continue
				}
				b, err := splitGoBuild(line, stageEnv)
				if err != nil {
					return Build{}, c.Location(), fmt.Errorf("line %d: %w", c.Location()[0].Start.Line, err)
				}
				found, loc = append(found, b), c.Location()
			}
		}
		if st.Name != "" {
			env[strings.ToLower(st.Name)] = stageEnv
		}
	}
	if len(found) != 1 {
		return Build{}, nil, fmt.Errorf("want exactly one RUN with go build, found %d", len(found))
	}
	return found[0], loc, nil
}

type envList []string

func (e envList) Get(k string) (string, bool) {
	for i := len(e) - 1; i >= 0; i-- {
		if key, v, _ := strings.Cut(e[i], "="); key == k {
			return v, true
		}
	}
	return "", false
}

func (e envList) Keys() []string {
	var ks []string
	for _, kv := range e {
		k, _, _ := strings.Cut(kv, "=")
		ks = append(ks, k)
	}
	return ks
}

func splitGoBuild(line string, env []string) (Build, error) {
	words, err := shell.NewLex('\\').ProcessWords(line, envList(env))
	if err != nil {
		return Build{}, err
	}
	b := Build{Env: slices.Clone(env)}
	i := 0
	for ; i+1 < len(words); i++ {
		if words[i] == "go" && words[i+1] == "build" {
			break
		}
	}
	if i+1 >= len(words) {
		return Build{}, fmt.Errorf("no `go build` command in %q", line)
	}
	// Assignments right before the command are its environment too.
	for j := i - 1; j >= 0 && strings.Contains(words[j], "=") && !strings.HasPrefix(words[j], "-"); j-- {
		b.Env = append(b.Env, words[j])
	}
	args := words[i+2:]
	for j := 0; j < len(args); j++ {
		a := args[j]
		switch {
		case a == "&&" || a == ";" || a == "||" || a == "|":
			return b, nil
		case a == "-o":
			j++ // the output, which the caller chooses
		case strings.HasPrefix(a, "-o="):
		case strings.HasPrefix(a, "-"):
			b.Flags = append(b.Flags, a)
		default:
			b.Packages = append(b.Packages, a)
		}
	}
	return b, nil
}
