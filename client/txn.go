package client

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// Cmp is one comparison of a transaction's guard.
type Cmp struct{ c *pb.Compare }

func cmp(key string, target pb.Compare_CompareTarget, op string) *pb.Compare {
	c := &pb.Compare{Key: []byte(key), Target: target}
	switch op {
	case "=", "==":
		c.Result = pb.Compare_EQUAL
	case "!=":
		c.Result = pb.Compare_NOT_EQUAL
	case ">":
		c.Result = pb.Compare_GREATER
	case "<":
		c.Result = pb.Compare_LESS
	default:
		panic("client: comparison operator must be =, !=, > or <, not " + op)
	}
	return c
}

// CompareValue compares key's value: CompareValue("k", "=", "v").
func CompareValue(key, op, value string) Cmp {
	c := cmp(key, pb.Compare_VALUE, op)
	c.TargetUnion = &pb.Compare_Value{Value: []byte(value)}
	return Cmp{c}
}

// CompareVersion compares key's version (0 if it does not exist).
func CompareVersion(key, op string, version int64) Cmp {
	c := cmp(key, pb.Compare_VERSION, op)
	c.TargetUnion = &pb.Compare_Version{Version: version}
	return Cmp{c}
}

// CompareModRevision compares key's mod revision.
func CompareModRevision(key, op string, rev int64) Cmp {
	c := cmp(key, pb.Compare_MOD, op)
	c.TargetUnion = &pb.Compare_ModRevision{ModRevision: rev}
	return Cmp{c}
}

// CompareCreateRevision compares key's create revision.
func CompareCreateRevision(key, op string, rev int64) Cmp {
	c := cmp(key, pb.Compare_CREATE, op)
	c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: rev}
	return Cmp{c}
}

// Op is one operation of a transaction branch.
type Op struct{ op *pb.RequestOp }

// OpPut puts key=value.
func OpPut(key, value string) Op {
	return Op{&pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(value)}}}}
}

// OpGet reads key (with WithPrefix/WithRange/WithLimit options).
func OpGet(key string, opts ...Option) Op {
	o := collect(opts)
	return Op{&pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key), RangeEnd: o.rangeEnd(key), Limit: o.limit}}}}
}

// OpDelete deletes key (with WithPrefix/WithRange options).
func OpDelete(key string, opts ...Option) Op {
	o := collect(opts)
	return Op{&pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: o.rangeEnd(key)}}}}
}

// Txn builds a transaction: If(...).Then(...).Else(...).Commit(ctx).
type Txn struct {
	c   *Client
	req pb.TxnRequest
}

// Txn starts a transaction.
func (c *Client) Txn() *Txn { return &Txn{c: c} }

// If adds comparisons; all must hold for Then to run.
func (t *Txn) If(cs ...Cmp) *Txn {
	for _, c := range cs {
		t.req.Compare = append(t.req.Compare, c.c)
	}
	return t
}

// Then adds operations run when every comparison holds.
func (t *Txn) Then(ops ...Op) *Txn {
	for _, o := range ops {
		t.req.Success = append(t.req.Success, o.op)
	}
	return t
}

// Else adds operations run otherwise.
func (t *Txn) Else(ops ...Op) *Txn {
	for _, o := range ops {
		t.req.Failure = append(t.req.Failure, o.op)
	}
	return t
}

// TxnResult is the answer to a transaction.
type TxnResult struct {
	Succeeded bool
	Revision  int64
	// Gets holds the results of the OpGet operations of the branch that
	// ran, in order.
	Gets [][]KeyValue
}

// Commit runs the transaction.
func (t *Txn) Commit(ctx context.Context) (*TxnResult, error) {
	var resp *pb.TxnResponse
	err := t.c.do(ctx, true, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).Txn(ctx, &t.req)
		return err
	})
	if err != nil {
		return nil, err
	}
	r := &TxnResult{Succeeded: resp.Succeeded, Revision: resp.Header.GetRevision()}
	for _, op := range resp.Responses {
		if rr := op.GetResponseRange(); rr != nil {
			var kvs []KeyValue
			for _, kv := range rr.Kvs {
				kvs = append(kvs, fromPB(kv))
			}
			r.Gets = append(r.Gets, kvs)
		}
	}
	return r, nil
}
