package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/sched"
)

// Paths served by the coordinator.
const (
	PathRegister    = "/api/worker/register"
	PathHeartbeat   = "/api/worker/heartbeat"
	PathTask        = "/api/worker/task"
	PathDone        = "/api/worker/done"
	PathFailed      = "/api/worker/failed"
	PathFetchFailed = "/api/worker/fetch-failed"
	PathJobs        = "/api/jobs"  // POST: submit; GET: list
	PathJob         = "/api/jobs/" // GET /api/jobs/ID
	PathStatus      = "/status.json"
)

// ShufflePath is where a worker serves partition r of map attempt a of
// task m of job j.
func ShufflePath(j string, m int, a uint64, r int) string {
	return fmt.Sprintf("/shuffle/%s/%d/%d/%d", j, m, a, r)
}

// MaxBody bounds every control request body.
const MaxBody = 4 << 20

// ErrRemote wraps an error reply from a server.
var ErrRemote = errors.New("remote error")

// WorkerReq identifies the calling worker.
type WorkerReq struct {
	ID string `json:"id"`
}

// RegisterReq is posted by a worker when it starts and whenever the
// coordinator says it does not know it.
type RegisterReq struct {
	ID   string `json:"id"`
	Addr string `json:"addr"` // host:port of its shuffle server
}

// DoneReq reports a completed attempt.
type DoneReq struct {
	ID       string       `json:"id"`
	Attempt  uint64       `json:"attempt"`
	Counters job.Counters `json:"counters,omitempty"`
}

// DoneReply says whether the attempt was committed.
type DoneReply struct {
	Committed bool `json:"committed"`
}

// FailedReq reports that user code failed an attempt.
type FailedReq struct {
	ID      string `json:"id"`
	Attempt uint64 `json:"attempt"`
	Error   string `json:"error"`
}

// FetchFailedReq reports that a reduce attempt could not fetch some map
// tasks' outputs (all of them in one report, so that a lost worker costs
// one round of re-execution, not one per map task).
type FetchFailedReq struct {
	ID      string            `json:"id"`
	Attempt uint64            `json:"attempt"`
	Lost    []sched.MapOutput `json:"lost"`
	Error   string            `json:"error"`
}

// SubmitReply names the submitted job.
type SubmitReply struct {
	Job string `json:"job"`
}

// JobStatus is a job's summary.
type JobStatus struct {
	ID          string       `json:"id"`
	App         string       `json:"app"`
	Status      string       `json:"status"`
	Error       string       `json:"error,omitempty"`
	Output      string       `json:"output"`
	NMap        int          `json:"nMap"`
	MapsDone    int          `json:"mapsDone"`
	NReduce     int          `json:"nReduce"`
	ReducesDone int          `json:"reducesDone"`
	Submitted   time.Time    `json:"submitted"`
	Finished    time.Time    `json:"finished,omitzero"`
	ElapsedSec  float64      `json:"elapsedSec"`
	Counters    job.Counters `json:"counters"`
}

// Status is the coordinator's full state, as served at PathStatus.
type Status struct {
	Now     time.Time       `json:"now"`
	Jobs    []JobStatus     `json:"jobs"`
	Workers []*sched.Worker `json:"workers"`
	// Tasks of the jobs, by job ID.
	Tasks map[string][]*sched.Task `json:"tasks"`
}

// Summarize builds a JobStatus.
func Summarize(j *sched.Job, now time.Time) JobStatus {
	end := now
	if !j.Finished.IsZero() {
		end = j.Finished
	}
	return JobStatus{
		ID: j.ID, App: j.Spec.App, Status: j.Status, Error: j.Error, Output: j.Spec.Output,
		NMap: len(j.Maps), MapsDone: j.MapsDone(), NReduce: len(j.Reduces), ReducesDone: j.ReducesDone(),
		Submitted: j.Submitted, Finished: j.Finished, ElapsedSec: end.Sub(j.Submitted).Seconds(),
		Counters: j.Counters(),
	}
}

type errorBody struct {
	Error string `json:"error"`
}

// WriteJSON writes v with the given status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// WriteError writes an error reply.
func WriteError(w http.ResponseWriter, code int, err error) {
	WriteJSON(w, code, errorBody{Error: err.Error()})
}

// ReadJSON decodes a bounded, strictly-typed request body. Unknown fields
// and trailing garbage are errors, so a confused peer is told so.
func ReadJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad request body: %w", err)
	}
	if dec.More() {
		return errors.New("bad request body: trailing data")
	}
	return nil
}

// Client calls a server's JSON API.
type Client struct {
	// Base is the server's URL, e.g. "http://127.0.0.1:7070".
	Base string
	HTTP *http.Client
}

// NewClient returns a client for addr ("host:port" or a URL).
func NewClient(addr string, timeout time.Duration) *Client {
	return &Client{Base: BaseURL(addr), HTTP: &http.Client{Timeout: timeout}}
}

// BaseURL turns "host:port" into "http://host:port".
func BaseURL(addr string) string {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimRight(addr, "/")
	}
	return "http://" + addr
}

// Call sends in (nil for GET) to path and decodes the reply into out (may
// be nil). A non-2xx reply gives an error wrapping ErrRemote with the
// server's message.
func (c *Client) Call(ctx context.Context, path string, in, out any) error {
	method := http.MethodGet
	var body io.Reader
	if in != nil {
		method = http.MethodPost
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e errorBody
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("%w: %s", ErrRemote, e.Error)
		}
		return fmt.Errorf("%w: %s: %s", ErrRemote, resp.Status, bytes.TrimSpace(data))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("bad reply from %s%s: %w", c.Base, path, err)
	}
	return nil
}
