package raft

// readOnly tracks ReadIndex requests waiting for a heartbeat round to
// confirm that this node is still the leader (thesis §6.4). Requests are
// kept in arrival order: an ack for a later request's heartbeat also
// confirms every earlier one, because that heartbeat was sent after them.
type readOnly struct {
	pending map[string]*readIndexStatus
	queue   []string
}

type readIndexStatus struct {
	req   Message
	index uint64
	acks  map[uint64]bool
}

func newReadOnly() readOnly {
	return readOnly{pending: map[string]*readIndexStatus{}}
}

// addRequest records a read at the given commit index. Contexts must be
// unique among outstanding requests; a duplicate is ignored.
func (ro *readOnly) addRequest(index uint64, m Message) {
	ctx := string(m.Context)
	if _, ok := ro.pending[ctx]; ok {
		return
	}
	ro.pending[ctx] = &readIndexStatus{req: m, index: index, acks: map[uint64]bool{}}
	ro.queue = append(ro.queue, ctx)
}

// recvAck records that id acknowledged the heartbeat carrying ctx and
// returns the acks so far, or nil if ctx is unknown.
func (ro *readOnly) recvAck(id uint64, ctx []byte) map[uint64]bool {
	rs, ok := ro.pending[string(ctx)]
	if !ok {
		return nil
	}
	rs.acks[id] = true
	return rs.acks
}

// advance removes and returns every request up to and including ctx.
func (ro *readOnly) advance(ctx []byte) []*readIndexStatus {
	key := string(ctx)
	i := -1
	for j, c := range ro.queue {
		if c == key {
			i = j
			break
		}
	}
	if i < 0 {
		return nil
	}
	out := make([]*readIndexStatus, 0, i+1)
	for _, c := range ro.queue[:i+1] {
		out = append(out, ro.pending[c])
		delete(ro.pending, c)
	}
	ro.queue = append(ro.queue[:0], ro.queue[i+1:]...)
	return out
}

func (ro *readOnly) lastPendingCtx() []byte {
	if len(ro.queue) == 0 {
		return nil
	}
	return []byte(ro.queue[len(ro.queue)-1])
}
