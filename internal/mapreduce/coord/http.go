package coord

import (
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
)

// Handler returns the coordinator's HTTP API and status page.
func (c *Coordinator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+wire.PathRegister, c.handleRegister)
	mux.HandleFunc("POST "+wire.PathHeartbeat, c.handleHeartbeat)
	mux.HandleFunc("POST "+wire.PathTask, c.handleTask)
	mux.HandleFunc("POST "+wire.PathDone, c.handleDone)
	mux.HandleFunc("POST "+wire.PathFailed, c.handleFailed)
	mux.HandleFunc("POST "+wire.PathFetchFailed, c.handleFetchFailed)
	mux.HandleFunc("POST "+wire.PathJobs, c.handleSubmit)
	mux.HandleFunc("GET "+wire.PathJobs, func(w http.ResponseWriter, r *http.Request) {
		wire.WriteJSON(w, http.StatusOK, c.Status().Jobs)
	})
	mux.HandleFunc("GET "+wire.PathJob+"{id}", func(w http.ResponseWriter, r *http.Request) {
		st, err := c.Job(r.PathValue("id"))
		if err != nil {
			wire.WriteError(w, http.StatusNotFound, err)
			return
		}
		wire.WriteJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET "+wire.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		wire.WriteJSON(w, http.StatusOK, c.Status())
	})
	mux.HandleFunc("GET /{$}", c.handlePage)
	return mux
}

// decode reads a request body; on failure it answers 400 and logs, so a
// worker speaking garbage is told what is wrong and changes nothing.
func (c *Coordinator) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := wire.ReadJSON(r, v); err != nil {
		c.cfg.Logf("rejected %s %s from %s: %v", r.Method, r.URL.Path, r.RemoteAddr, err)
		wire.WriteError(w, http.StatusBadRequest, err)
		return false
	}
	return true
}

func (c *Coordinator) handleRegister(w http.ResponseWriter, r *http.Request) {
	var req wire.RegisterReq
	if !c.decode(w, r, &req) {
		return
	}
	if req.ID == "" || req.Addr == "" {
		wire.WriteError(w, http.StatusBadRequest, errors.New("register: id and addr are required"))
		return
	}
	c.mu.Lock()
	c.s.RegisterWorker(req.ID, req.Addr, c.cfg.Clock.Now())
	c.cfg.Logf("worker %s registered at %s", req.ID, req.Addr)
	c.afterLocked()
	c.mu.Unlock()
	wire.WriteJSON(w, http.StatusOK, struct{}{})
}

func (c *Coordinator) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	var req wire.WorkerReq
	if !c.decode(w, r, &req) {
		return
	}
	c.mu.Lock()
	rep := c.s.Heartbeat(req.ID, c.cfg.Clock.Now())
	c.mu.Unlock()
	wire.WriteJSON(w, http.StatusOK, rep)
}

func (c *Coordinator) handleTask(w http.ResponseWriter, r *http.Request) {
	var req wire.WorkerReq
	if !c.decode(w, r, &req) {
		return
	}
	deadline := time.NewTimer(c.cfg.LongPoll)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		a := c.s.RequestTask(req.ID, c.cfg.Clock.Now())
		ch := c.changed
		if a.Kind != sched.KindWait {
			c.afterLocked()
		}
		c.mu.Unlock()
		if a.Kind != sched.KindWait {
			wire.WriteJSON(w, http.StatusOK, a)
			return
		}
		// Wait for a state change, or re-check at the next tick: backup
		// eligibility changes with time alone.
		tick := time.NewTimer(c.cfg.TickInterval)
		select {
		case <-ch:
		case <-tick.C:
		case <-deadline.C:
			tick.Stop()
			wire.WriteJSON(w, http.StatusOK, a)
			return
		case <-r.Context().Done():
			tick.Stop()
			return
		}
		tick.Stop()
	}
}

func (c *Coordinator) handleDone(w http.ResponseWriter, r *http.Request) {
	var req wire.DoneReq
	if !c.decode(w, r, &req) {
		return
	}
	c.mu.Lock()
	ok := c.s.ReportDone(req.ID, req.Attempt, sched.Result{Counters: req.Counters}, c.cfg.Clock.Now())
	c.afterLocked()
	c.mu.Unlock()
	wire.WriteJSON(w, http.StatusOK, wire.DoneReply{Committed: ok})
}

func (c *Coordinator) handleFailed(w http.ResponseWriter, r *http.Request) {
	var req wire.FailedReq
	if !c.decode(w, r, &req) {
		return
	}
	c.mu.Lock()
	c.cfg.Logf("worker %s: attempt %d failed: %s", req.ID, req.Attempt, req.Error)
	c.s.ReportFailed(req.ID, req.Attempt, req.Error, c.cfg.Clock.Now())
	c.afterLocked()
	c.mu.Unlock()
	wire.WriteJSON(w, http.StatusOK, struct{}{})
}

func (c *Coordinator) handleFetchFailed(w http.ResponseWriter, r *http.Request) {
	var req wire.FetchFailedReq
	if !c.decode(w, r, &req) {
		return
	}
	c.mu.Lock()
	c.cfg.Logf("worker %s: attempt %d cannot fetch %d map output(s): %s", req.ID, req.Attempt, len(req.Lost), req.Error)
	c.s.ReportFetchFailed(req.ID, req.Attempt, req.Lost, c.cfg.Clock.Now())
	c.afterLocked()
	c.mu.Unlock()
	wire.WriteJSON(w, http.StatusOK, struct{}{})
}

func (c *Coordinator) handleSubmit(w http.ResponseWriter, r *http.Request) {
	var spec job.Spec
	if !c.decode(w, r, &spec) {
		return
	}
	id, err := c.Submit(spec)
	if err != nil {
		wire.WriteError(w, http.StatusBadRequest, err)
		return
	}
	wire.WriteJSON(w, http.StatusOK, wire.SubmitReply{Job: id})
}

var page = template.Must(template.New("status").Funcs(template.FuncMap{
	"since": func(now, t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return now.Sub(t).Round(100 * time.Millisecond).String()
	},
	"dur": func(a, b time.Time) string {
		if a.IsZero() || b.IsZero() {
			return ""
		}
		return b.Sub(a).Round(time.Millisecond).String()
	},
	"workers": func(as []sched.Attempt) string {
		var s []string
		for _, a := range as {
			x := a.Worker
			if a.Backup {
				x += " (backup)"
			}
			s = append(s, x)
		}
		return strings.Join(s, ", ")
	},
	"pct": func(a, b int) string {
		if b == 0 {
			return "100%"
		}
		return fmt.Sprintf("%d%%", 100*a/b)
	},
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>cairn mapreduce</title>
<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1em}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}th{background:#eee}</style></head><body>
<h1>Cairn MapReduce coordinator</h1>
<p>{{.Now.Format "2006-01-02 15:04:05"}} &middot; <a href="/status.json">JSON</a></p>
<h2>Jobs</h2>
<table><tr><th>job</th><th>app</th><th>status</th><th>map</th><th>reduce</th><th>elapsed</th><th>output</th><th>error</th></tr>
{{range .Jobs}}<tr><td>{{.ID}}</td><td>{{.App}}</td><td>{{.Status}}</td>
<td>{{.MapsDone}}/{{.NMap}} ({{pct .MapsDone .NMap}})</td><td>{{.ReducesDone}}/{{.NReduce}} ({{pct .ReducesDone .NReduce}})</td>
<td>{{printf "%.1fs" .ElapsedSec}}</td><td>{{.Output}}</td><td>{{.Error}}</td></tr>{{end}}</table>
<h2>Workers</h2>
<table><tr><th>id</th><th>address</th><th>alive</th><th>last heartbeat</th></tr>
{{$now := .Now}}{{range .Workers}}<tr><td>{{.ID}}</td><td>{{.Addr}}</td><td>{{.Alive}}</td><td>{{since $now .LastSeen}} ago</td></tr>{{end}}</table>
{{range $id, $ts := .Tasks}}<h2>Tasks of {{$id}}</h2>
<table><tr><th>task</th><th>state</th><th>running on</th><th>committed on</th><th>took</th><th>executions</th><th>failures</th><th>last error</th></tr>
{{range $ts}}<tr><td>{{.Kind}} {{.Index}}</td><td>{{.State}}</td><td>{{workers .Running}}</td>
<td>{{if .Done}}{{.Done.Worker}}{{end}}</td><td>{{dur .Start .End}}</td><td>{{.Executions}}</td><td>{{.Failures}}</td><td>{{.LastErr}}</td></tr>{{end}}</table>{{end}}
</body></html>`))

func (c *Coordinator) handlePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := page.Execute(w, c.Status()); err != nil {
		c.cfg.Logf("status page: %v", err)
	}
}
