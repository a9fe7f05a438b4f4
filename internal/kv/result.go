package kv

import (
	"encoding/binary"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Result is the outcome of applying one log entry. At most one response
// field is set, matching the request; Err is set instead when the request
// failed.
type Result struct {
	Put         *pb.PutResponse
	DeleteRange *pb.DeleteRangeResponse
	Txn         *pb.TxnResponse
	Append      *AppendResponse

	// Err is a request error decided deterministically at apply time (for
	// example rpctypes.ErrGRPCLeaseNotFound), the same on every replica.
	// Errors about the request are gRPC status errors; errors about the
	// entry or the session wrap ErrCorruptCommand, ErrStaleSequence or
	// ErrIndexApplied.
	Err error
}

// Section tags of an encoded result (sessions keep their last result
// encoded, and snapshots carry it).
const (
	resultVersion = 1

	rtagPut         = 1
	rtagDeleteRange = 2
	rtagTxn         = 3
	rtagAppend      = 4
	rtagErr         = 5
)

// encodeResult encodes r for the session table. A non-status error is kept
// as its message under codes.Unknown; only request errors, which are all
// statuses, are ever cached.
func encodeResult(r *Result) []byte {
	// Size the buffer first (an error section, rare, may still grow it),
	// so that a session's cached result usually costs one allocation.
	var nPut, nDel, nTxn int
	size := 1
	if r.Put != nil {
		nPut = r.Put.Size()
		size += sectionSize(nPut)
	}
	if r.DeleteRange != nil {
		nDel = r.DeleteRange.Size()
		size += sectionSize(nDel)
	}
	if r.Txn != nil {
		nTxn = r.Txn.Size()
		size += sectionSize(nTxn)
	}
	if r.Append != nil {
		size += sectionSize(2 * binary.MaxVarintLen64)
	}
	b := make([]byte, 1, size)
	b[0] = resultVersion
	if r.Put != nil {
		b = appendSizedMessage(b, rtagPut, r.Put, nPut)
	}
	if r.DeleteRange != nil {
		b = appendSizedMessage(b, rtagDeleteRange, r.DeleteRange, nDel)
	}
	if r.Txn != nil {
		b = appendSizedMessage(b, rtagTxn, r.Txn, nTxn)
	}
	if r.Append != nil {
		var body []byte
		body = binary.AppendVarint(body, r.Append.Revision)
		body = binary.AppendVarint(body, r.Append.Length)
		b = appendSection(b, rtagAppend, body)
	}
	if r.Err != nil {
		st, _ := status.FromError(r.Err)
		var body []byte
		body = binary.AppendUvarint(body, uint64(st.Code()))
		body = append(body, st.Message()...)
		b = appendSection(b, rtagErr, body)
	}
	return b
}

// sectionSize is the encoded size of a section with an n-byte body.
func sectionSize(n int) int { return 1 + uvarintLen(uint64(n)) + n }

func appendSection(b []byte, tag byte, body []byte) []byte {
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...)
}

// decodeResult is the inverse of encodeResult. A decoded error is a gRPC
// status error, which errors.Is matches against the rpctypes error with the
// same code and message.
func decodeResult(b []byte) (*Result, error) {
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != resultVersion {
		return nil, fmt.Errorf("unknown result encoding version %d", v)
	}
	r := &Result{}
	var err error
	for d.err == nil && len(d.b) > 0 {
		tag := d.byte()
		body := d.bytes(d.uvarint())
		if d.err != nil {
			break
		}
		switch tag {
		case rtagPut:
			r.Put = &pb.PutResponse{}
			err = r.Put.Unmarshal(body)
		case rtagDeleteRange:
			r.DeleteRange = &pb.DeleteRangeResponse{}
			err = r.DeleteRange.Unmarshal(body)
		case rtagTxn:
			r.Txn = &pb.TxnResponse{}
			err = r.Txn.Unmarshal(body)
		case rtagAppend:
			bd := decoder{b: body}
			r.Append = &AppendResponse{Revision: bd.varint(), Length: bd.varint()}
			if bd.err == nil && len(bd.b) != 0 {
				bd.fail("append response")
			}
			err = bd.err
		case rtagErr:
			bd := decoder{b: body}
			code := bd.uvarint()
			if bd.err == nil && code > uint64(codes.Unauthenticated) {
				bd.fail("status code")
			}
			r.Err = status.Error(codes.Code(code), string(bd.b))
			err = bd.err
		default:
			err = fmt.Errorf("unknown result section tag %d", tag)
		}
		if err != nil {
			return nil, err
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	return r, nil
}
