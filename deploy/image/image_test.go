package image

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

// root is the repository root, the Dockerfile's build context.
const root = "../.."

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func goVersion(t *testing.T) string {
	t.Helper()
	mf, err := modfile.ParseLax("go.mod", read(t, "go.mod"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return mf.Go.Version
}

func TestDockerfileLint(t *testing.T) {
	problems, err := Lint(read(t, "deploy/Dockerfile"), goVersion(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("deploy/Dockerfile %s", p)
	}
}

// Each rule of Lint fires on a Dockerfile that breaks it, and only then.
func TestLintCatches(t *testing.T) {
	const good = `FROM golang:1.26.8-bookworm AS build
ENV CGO_ENABLED=0
RUN go build -trimpath -o /out/ ./cmd/qkd-agent
FROM scratch
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
VOLUME ["/var/lib/qkdnet"]
`
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"good", "", "", ""},
		{"latest", "golang:1.26.8-bookworm", "golang:latest", `tag "latest" is not an exact release`},
		{"minor only", "golang:1.26.8-bookworm", "golang:1.26", `tag "1.26" is not an exact release`},
		{"no tag", "golang:1.26.8-bookworm", "golang", "has no tag or digest"},
		{"arg", "golang:1.26.8-bookworm", "golang:${GO}", "ARG substitution"},
		{"other go", "golang:1.26.8-bookworm", "golang:1.25.1", "not go.mod's Go 1.26.8"},
		{"digest", "golang:1.26.8-bookworm", "golang:1.26.8-bookworm@sha256:" + strings.Repeat("ab", 32), ""},
		{"digest, no version", "golang:1.26.8-bookworm", "golang@sha256:" + strings.Repeat("ab", 32), "names no Go version"},
		{"root", "USER 65532:65532", "USER root", "USER root is root"},
		{"root group", "USER 65532:65532", "USER 65532:0", "is root"},
		{"named user", "USER 65532:65532", "USER nonroot", "not numeric"},
		{"no user", "USER 65532:65532\n", "", "sets no USER"},
		{"no volume", `VOLUME ["/var/lib/qkdnet"]`, "", "VOLUME /var/lib/qkdnet"},
		{"add url", "FROM scratch\n", "FROM scratch\nADD https://example.com/x /x\n", "ADD of a remote source"},
		{"copy from image", "COPY --from=build", "COPY --from=alpine:3", "COPY --from=alpine:3: not an earlier named stage"},
		{"unnamed stage", " AS build", "", "has no name"},
		{"cgo", "ENV CGO_ENABLED=0\n", "", "without CGO_ENABLED=0"},
		{"inline cgo", "ENV CGO_ENABLED=0\nRUN go", "RUN CGO_ENABLED=0 go", ""},
		{"cgo overridden", "RUN go", "RUN CGO_ENABLED=1 go", "without CGO_ENABLED=0"},
		{"trimpath", "-trimpath ", "", "without -trimpath"},
		{"not a command", "./cmd/qkd-agent", "./kmm", "only ./cmd/... binaries"},
		{"two builds", "RUN go build", "RUN go build ./cmd/sae\nRUN go build", "exactly one RUN with go build"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := good
			if tc.old != "" {
				if !strings.Contains(src, tc.old) {
					t.Fatalf("case does not apply: %q", tc.old)
				}
				src = strings.Replace(src, tc.old, tc.new, 1)
			}
			problems, err := Lint([]byte(src), "1.26.8")
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(problems, "\n")
			if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
				t.Errorf("problems:\n%s\nwant one mentioning %q", got, tc.want)
			}
		})
	}
}

func TestGoBuildSplitsAsTheShell(t *testing.T) {
	b, err := GoBuild([]byte("FROM golang:1.26.8 AS b\nENV CGO_ENABLED=0 GOOS=linux\n" +
		"RUN --mount=type=cache,target=/root/.cache/go-build \\\n    go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/a ./cmd/b && ls /out\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(b.Flags, "|"); got != "-trimpath|-ldflags=-s -w" {
		t.Errorf("flags %q", got)
	}
	if got := strings.Join(b.Packages, "|"); got != "./cmd/a|./cmd/b" {
		t.Errorf("packages %q", got)
	}
	if got := strings.Join(b.Env, "|"); got != "CGO_ENABLED=0|GOOS=linux" {
		t.Errorf("env %q", got)
	}
}

// TestStaticBinaries runs the Dockerfile's go build (its environment, flags
// and packages) and checks that every binary is static: an image FROM
// scratch has no dynamic loader and no libc. It also checks that -trimpath
// kept this machine's paths out of the binaries.
func TestStaticBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary of the image")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the image is linux; checking ELF")
	}
	b, err := GoBuild(read(t, "deploy/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	args := append([]string{"build"}, b.Flags...)
	args = append(append(args, "-o", out+"/"), b.Packages...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), b.Env...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range b.Packages {
		name := filepath.Join(out, filepath.Base(pkg))
		f, err := elf.Open(name)
		if err != nil {
			t.Fatalf("%s: %v", pkg, err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("%s: has a %v program header: dynamically linked", pkg, p.Type)
			}
		}
		if s := f.Section(".dynamic"); s != nil {
			t.Errorf("%s: has a .dynamic section", pkg)
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("%s: needs %v", pkg, libs)
		}
		f.Close()
		bin, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(bin, []byte(abs+"/")) {
			t.Errorf("%s: holds the build directory %s (no -trimpath?)", pkg, abs)
		}
	}
}
