package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ErrNoDocker is returned when the docker CLI or daemon is unavailable.
var ErrNoDocker = errors.New("chaos: docker is not available")

// Docker runs the docker CLI. Every call is bounded by Timeout.
type Docker struct {
	// Bin is the docker executable. Default "docker".
	Bin string
	// Timeout bounds one command. Default 2 minutes.
	Timeout time.Duration
}

// Run runs `docker args...` and returns its trimmed stdout.
func (d Docker) Run(ctx context.Context, args ...string) (string, error) {
	bin := d.Bin
	if bin == "" {
		bin = "docker"
	}
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Available checks that the docker CLI can reach a daemon.
func (d Docker) Available(ctx context.Context) error {
	if _, err := exec.LookPath(d.binOrDefault()); err != nil {
		return fmt.Errorf("%w: %v", ErrNoDocker, err)
	}
	v, err := d.Run(ctx, "version", "--format", "{{.Server.Version}}")
	if err != nil || v == "" {
		return fmt.Errorf("%w: %v", ErrNoDocker, err)
	}
	return nil
}

func (d Docker) binOrDefault() string {
	if d.Bin == "" {
		return "docker"
	}
	return d.Bin
}

// Labels put on everything a run creates, so a later run can remove what
// a killed run left behind.
const (
	labelRun     = "io.cairn.chaos.run"
	labelExpires = "io.cairn.chaos.expires" // unix seconds
)

// Reap removes containers, networks and volumes of earlier chaos runs
// whose deadline has passed (runs that were killed before cleaning up).
// Errors are ignored: reaping is best effort.
func (d Docker) Reap(ctx context.Context) {
	now := time.Now().Unix()
	expired := func(v string) bool {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		return err == nil && n < now
	}
	out, _ := d.Run(ctx, "ps", "-a", "--filter", "label="+labelExpires, "--format",
		`{{.ID}} {{.Label "`+labelExpires+`"}}`)
	var ids []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && expired(f[1]) {
			ids = append(ids, f[0])
		}
	}
	if len(ids) > 0 {
		_, _ = d.Run(ctx, append([]string{"rm", "-f", "-v"}, ids...)...)
	}
	for _, kind := range []string{"network", "volume"} {
		out, _ := d.Run(ctx, kind, "ls", "-q", "--filter", "label="+labelExpires)
		for _, name := range strings.Fields(out) {
			v, err := d.Run(ctx, kind, "inspect", "--format", `{{index .Labels "`+labelExpires+`"}}`, name)
			if err == nil && expired(v) {
				_, _ = d.Run(ctx, kind, "rm", name)
			}
		}
	}
}

// Logs returns a container's output (stdout and stderr interleaved).
func (d Docker) Logs(ctx context.Context, container string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.binOrDefault(), "logs", "--timestamps", container).CombinedOutput()
	return string(out), err
}
