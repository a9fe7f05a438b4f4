package apps

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"os/exec"
	"strings"
	"sync"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
)

// Streaming runs external commands as mapper and reducer, as Hadoop
// Streaming does. The mapper reads input lines on stdin and writes
// "key<TAB>value" lines (a line without a tab is a key with an empty
// value). The reducer reads the sorted "key<TAB>value" lines of its
// partition on stdin and its output lines are the job's output. One
// process runs per task; a process that exits non-zero fails the task
// with its exit status and the tail of its stderr.
func Streaming() *job.App {
	return &job.App{
		Name:  "streaming",
		Usage: "run --mapper and --reducer shell commands over stdin/stdout lines",
		Flags: []job.Flag{
			{Name: "mapper", Usage: "shell command run per map task (required)"},
			{Name: "reducer", Default: "cat", Usage: "shell command run per reduce task"},
		},
		New: func(args job.Args) (*job.Funcs, error) {
			if strings.TrimSpace(args["mapper"]) == "" {
				return nil, errors.New("streaming needs --mapper")
			}
			if strings.TrimSpace(args["reducer"]) == "" {
				return nil, errors.New("streaming needs --reducer")
			}
			var p *proc
			start := func(role, cmd string) error {
				if p != nil {
					return p.startErr
				}
				p = startProc(role, cmd)
				return p.startErr
			}
			return &job.Funcs{
				Map: func(rec job.Record, out job.Output) error {
					if err := start("mapper", args["mapper"]); err != nil {
						return err
					}
					if err := p.write(rec.Text, "", false); err != nil {
						return err
					}
					p.drain(out)
					return nil
				},
				Reduce: func(key string, values iter.Seq[string], out job.Output) error {
					if err := start("reducer", args["reducer"]); err != nil {
						return err
					}
					for v := range values {
						if err := p.write(key, v, true); err != nil {
							return err
						}
					}
					p.drain(out)
					return nil
				},
				Flush: func(out job.Output) error {
					if p == nil {
						return nil
					}
					return p.finish(out)
				},
				Cleanup: func() {
					if p != nil {
						p.kill()
					}
				},
			}, nil
		},
	}
}

type proc struct {
	role, command string
	cmd           *exec.Cmd
	stdin         io.WriteCloser
	w             *bufio.Writer
	stderr        *tailBuffer
	startErr      error

	mu      sync.Mutex
	pending []string
	readErr error
	done    chan struct{}
}

func startProc(role, command string) *proc {
	p := &proc{role: role, command: command, stderr: &tailBuffer{max: 4096}, done: make(chan struct{})}
	p.cmd = exec.Command("/bin/sh", "-c", command)
	p.cmd.Stderr = p.stderr
	p.cmd.Env = append(os.Environ(), "CAIRN_MR_ROLE="+role)
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		p.startErr = err
		return p
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		p.startErr = err
		return p
	}
	if err := p.cmd.Start(); err != nil {
		p.startErr = fmt.Errorf("%s %q: %w", role, command, err)
		return p
	}
	p.w = bufio.NewWriterSize(p.stdin, 64<<10)
	go func() {
		defer close(p.done)
		r := bufio.NewReaderSize(stdout, 64<<10)
		for {
			line, err := r.ReadString('\n')
			if line != "" {
				p.mu.Lock()
				p.pending = append(p.pending, strings.TrimSuffix(line, "\n"))
				p.mu.Unlock()
			}
			if err != nil {
				if err != io.EOF {
					p.mu.Lock()
					p.readErr = err
					p.mu.Unlock()
				}
				return
			}
		}
	}()
	return p
}

func (p *proc) write(k, v string, tab bool) error {
	p.w.WriteString(k)
	if tab {
		p.w.WriteByte('\t')
		p.w.WriteString(v)
	}
	if err := p.w.WriteByte('\n'); err != nil {
		// The process stopped reading: most likely it exited, and its
		// exit status says more than the broken pipe.
		p.stdin.Close()
		<-p.done
		if werr := p.cmd.Wait(); werr != nil {
			return p.failure(werr)
		}
		return p.failure(err)
	}
	return nil
}

// drain emits the output lines read so far.
func (p *proc) drain(out job.Output) {
	p.mu.Lock()
	lines := p.pending
	p.pending = nil
	p.mu.Unlock()
	for _, l := range lines {
		k, v, _ := strings.Cut(l, "\t")
		out.Emit(k, v)
	}
}

// finish closes stdin, waits for the process and emits the rest.
func (p *proc) finish(out job.Output) error {
	ferr := p.w.Flush()
	p.stdin.Close()
	<-p.done
	werr := p.cmd.Wait()
	p.drain(out)
	if werr != nil {
		return p.failure(werr)
	}
	if ferr != nil {
		return p.failure(ferr)
	}
	return p.readErr
}

func (p *proc) failure(err error) error {
	msg := strings.TrimSpace(p.stderr.String())
	if msg != "" {
		msg = "; stderr: " + msg
	}
	return fmt.Errorf("%s %q failed: %v%s", p.role, p.command, err, msg)
}

func (p *proc) kill() {
	if p.cmd != nil && p.cmd.Process != nil && p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.stdin.Close()
		<-p.done
		p.cmd.Wait()
	}
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b.Write(p)
	if t.b.Len() > t.max {
		rest := t.b.Bytes()[t.b.Len()-t.max:]
		t.b = *bytes.NewBuffer(append([]byte(nil), rest...))
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.b.String()
}
