package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"filippo.io/edwards25519"
	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/require"
)

// RFC 8037 Appendix A: the Ed25519 example key (A.1 private d and public x,
// A.2 the public JWK), its RFC 7638 thumbprint (A.3) and the JWS of the
// payload "Example of Ed25519 signing" (A.4).
const (
	rfc8037D          = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
	rfc8037X          = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
	rfc8037Thumbprint = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
	rfc8037JWS        = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc." +
		"hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)

func TestRFC8037Vectors(t *testing.T) {
	d, err := base64.RawURLEncoding.DecodeString(rfc8037D)
	require.NoError(t, err)
	x, err := base64.RawURLEncoding.DecodeString(rfc8037X)
	require.NoError(t, err)
	pubA2 := ed25519.PublicKey(x)
	priv := ed25519.NewKeyFromSeed(d)
	require.Equal(t, pubA2, priv.Public(), "A.1 d and x are one key pair")

	// A.3: kid is the RFC 7638 thumbprint.
	require.Equal(t, rfc8037Thumbprint, Thumbprint(pubA2))
	require.Equal(t, rfc8037Thumbprint, jwkOf(pubA2).Kid)

	// A.4: the JWS signature layer verifies the published example...
	parts := strings.Split(rfc8037JWS, ".")
	require.Len(t, parts, 3)
	pl, err := base64.RawURLEncoding.DecodeString(parts[1])
	require.NoError(t, err)
	require.Equal(t, "Example of Ed25519 signing", string(pl))
	input := parts[0] + "." + parts[1]
	require.NoError(t, verifyJWS([]ed25519.PublicKey{pubA2}, input, parts[2]))
	require.NoError(t, jwt.SigningMethodEdDSA.Verify(input, mustB64u(t, parts[2]), pubA2))
	// ...and our signing primitive reproduces it (Ed25519 is deterministic).
	sig, err := jwt.SigningMethodEdDSA.Sign(input, priv)
	require.NoError(t, err)
	require.Equal(t, parts[2], b64u(sig))

	// A verifier for the A.2 key accepts the A.4 header and signature, and
	// refuses the payload only because it is not JSON claims.
	clk := newTestClock()
	require.Equal(t, rfc8037Thumbprint, Thumbprint(pubA2))
	v := NewVerifier(VerifierOptions{Keys: staticKeys{pub: pubA2, kid: rfc8037Thumbprint}, Now: clk.Now})
	keys, err := v.headerKeys(mustB64u(t, parts[0]))
	require.NoError(t, err)
	require.Equal(t, []ed25519.PublicKey{pubA2}, keys)
	_, err = v.verify(rfc8037JWS)
	require.ErrorIs(t, err, ErrMalformedToken)
	require.NotErrorIs(t, err, ErrBadSignature)

	// Any change to input or signature breaks it.
	require.ErrorIs(t, verifyJWS([]ed25519.PublicKey{pubA2}, input+"x", parts[2]), ErrBadSignature)
	bad := []byte(parts[2])
	bad[10] ^= 1
	require.Error(t, verifyJWS([]ed25519.PublicKey{pubA2}, input, string(bad)))
	other, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	require.ErrorIs(t, verifyJWS([]ed25519.PublicKey{other}, input, parts[2]), ErrBadSignature)
}

func mustB64u(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	require.NoError(t, err)
	return b
}

// nonCanonical returns seg with non-zero unused bits in its last character
// (it still decodes to the same bytes under a lenient decoder), or false
// when seg's length leaves no unused bits.
func nonCanonical(t *testing.T, seg string) (string, bool) {
	t.Helper()
	if len(seg)%4 == 0 {
		return "", false
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	v := strings.IndexByte(alphabet, seg[len(seg)-1])
	out := seg[:len(seg)-1] + string(alphabet[v|1])
	require.NotEqual(t, seg, out)
	lenient, err := base64.RawURLEncoding.DecodeString(out)
	require.NoError(t, err)
	require.Equal(t, mustB64u(t, seg), lenient, "lenient decoding hides the change")
	return out, true
}

func hs256(key []byte, header, payload string) string {
	in := b64u([]byte(header)) + "." + b64u([]byte(payload))
	m := hmac.New(sha256.New, key)
	m.Write([]byte(in))
	return in + "." + b64u(m.Sum(nil))
}

// TestVerifyBadInput: every malformed, forged or out-of-policy token is
// refused with an error wrapping ErrInvalidToken, and nothing panics.
func TestVerifyBadInput(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	now := clk.Now().Unix()
	hdr := e.ourHeader()
	good := e.forge(hdr, payloadAt(now, ""))
	c, err := e.broker.Verify(context.Background(), good)
	require.NoError(t, err, "the forge helper makes valid tokens")
	require.Equal(t, "0123456789abcdef0123456789abcdef", c.Jti)

	_, otherKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	pub := []byte(e.broker.PublicKey())
	gp := strings.Split(good, ".")
	tampered := strings.Replace(payloadAt(now, ""), "read:data:x", "read:data:*", 1)
	exp := func(v string) string {
		return `{"iss":"","sub":"s","exp":` + v + `,"iat":1,"jti":"j","scope":[]}`
	}
	nbf := func(v string) string {
		return `{"iss":"","sub":"s","exp":` + strconv.FormatInt(now+60, 10) + `,"nbf":` + v + `,"iat":1,"jti":"j","scope":[]}`
	}
	sigFlip := []byte(gp[2])
	sigFlip[5] ^= 0x20 // another base64url letter

	cases := []struct {
		name string
		tok  string
		want error
	}{
		{"empty", "", ErrMalformedToken},
		{"one part", "abc", ErrMalformedToken},
		{"two parts", gp[0] + "." + gp[1], ErrMalformedToken},
		{"four parts", good + ".x", ErrMalformedToken},
		{"empty parts", "..", ErrMalformedToken},
		{"space", " " + good, ErrMalformedToken},
		{"std base64 chars", strings.Replace(good, "-", "+", 1) + "/", ErrMalformedToken},
		{"alg none", e.forge(`{"alg":"none","typ":"JWT"}`, payloadAt(now, "")), ErrMalformedToken},
		{"alg none unsigned", b64u([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + gp[1] + ".", ErrMalformedToken},
		{"alg None", e.forge(`{"alg":"None","typ":"JWT"}`, payloadAt(now, "")), ErrMalformedToken},
		{"alg EDDSA", e.forge(`{"alg":"EDDSA","typ":"JWT"}`, payloadAt(now, "")), ErrMalformedToken},
		{"alg eddsa", e.forge(`{"alg":"eddsa"}`, payloadAt(now, "")), ErrMalformedToken},
		{"alg Ed25519", e.forge(`{"alg":"Ed25519"}`, payloadAt(now, "")), ErrMalformedToken},
		{"alg missing", e.forge(`{"typ":"JWT"}`, payloadAt(now, "")), ErrMalformedToken},
		{"alg not a string", e.forge(`{"alg":["EdDSA"]}`, payloadAt(now, "")), ErrMalformedToken},
		{"alg HS256 keyed with public key", hs256(pub, `{"alg":"HS256","typ":"JWT","kid":"`+e.broker.KeyID()+`"}`, payloadAt(now, "")), ErrMalformedToken},
		{"alg HS256 keyed with x", hs256([]byte(b64u(pub)), `{"alg":"HS256","typ":"JWT"}`, payloadAt(now, "")), ErrMalformedToken},
		{"alg EdDSA, HMAC signature", strings.Join(strings.Split(hs256(pub, hdr, payloadAt(now, "")), ".")[:2], ".") + "." +
			strings.Split(hs256(pub, hdr, payloadAt(now, "")), ".")[2], ErrMalformedToken}, // 32-byte signature
		{"another Ed25519 key, our kid", signJWS(otherKey, hdr, payloadAt(now, "")), ErrBadSignature},
		{"another Ed25519 key, no kid", signJWS(otherKey, `{"alg":"EdDSA"}`, payloadAt(now, "")), ErrBadSignature},
		{"another Ed25519 key, its kid", signJWS(otherKey, `{"alg":"EdDSA","kid":"`+Thumbprint(otherKey.Public().(ed25519.PublicKey))+`"}`, payloadAt(now, "")), ErrMalformedToken},
		{"tampered payload", gp[0] + "." + b64u([]byte(tampered)) + "." + gp[2], ErrBadSignature},
		{"tampered header", b64u([]byte(`{"alg":"EdDSA","typ":"JWS","kid":"`+e.broker.KeyID()+`"}`)) + "." + gp[1] + "." + gp[2], ErrBadSignature},
		{"tampered signature", gp[0] + "." + gp[1] + "." + string(sigFlip), ErrInvalidToken},
		{"signature truncated", gp[0] + "." + gp[1] + "." + gp[2][:80], ErrMalformedToken},
		{"signature empty", gp[0] + "." + gp[1] + ".", ErrMalformedToken},
		{"foreign kid", e.forge(`{"alg":"EdDSA","typ":"JWT","kid":"`+rfc8037Thumbprint+`"}`, payloadAt(now, "")), ErrMalformedToken},
		{"kid not a string", e.forge(`{"alg":"EdDSA","kid":1}`, payloadAt(now, "")), ErrMalformedToken},
		{"kid null", e.forge(`{"alg":"EdDSA","kid":null}`, payloadAt(now, "")), nil}, // decodes as "", upstream accepts
		{"crit header", e.forge(`{"alg":"EdDSA","typ":"JWT","kid":"`+e.broker.KeyID()+`","crit":["exp"]}`, payloadAt(now, "")), ErrMalformedToken},
		{"crit empty", e.forge(`{"alg":"EdDSA","crit":[]}`, payloadAt(now, "")), ErrMalformedToken},
		{"duplicate alg", e.forge(`{"alg":"none","alg":"EdDSA"}`, payloadAt(now, "")), ErrMalformedToken},
		{"case-variant alg", e.forge(`{"alg":"EdDSA","ALG":"none"}`, payloadAt(now, "")), ErrMalformedToken},
		{"case-variant kid", e.forge(`{"alg":"EdDSA","Kid":"x","kid":"`+e.broker.KeyID()+`"}`, payloadAt(now, "")), ErrMalformedToken},
		{"header array", e.forge(`[]`, payloadAt(now, "")), ErrMalformedToken},
		{"header null", e.forge(`null`, payloadAt(now, "")), ErrMalformedToken},
		{"header trailing", e.forge(`{"alg":"EdDSA"}{}`, payloadAt(now, "")), ErrMalformedToken},
		{"header not JSON", e.forge(`alg=EdDSA`, payloadAt(now, "")), ErrMalformedToken},
		{"payload not JSON", e.forge(hdr, `Example of Ed25519 signing`), ErrMalformedToken},
		{"payload array", e.forge(hdr, `[1]`), ErrMalformedToken},
		{"payload trailing", e.forge(hdr, payloadAt(now, "")+`{}`), ErrMalformedToken},
		{"exp string", e.forge(hdr, exp(`"`+strconv.FormatInt(now+60, 10)+`"`)), ErrMalformedToken},
		{"exp float", e.forge(hdr, exp(strconv.FormatInt(now+60, 10)+".0")), ErrMalformedToken},
		{"exp exponent", e.forge(hdr, exp(`1.9e9`)), ErrMalformedToken},
		{"exp huge", e.forge(hdr, exp(`1e400`)), ErrMalformedToken},
		{"exp overflow", e.forge(hdr, exp(`92233720368547758070`)), ErrMalformedToken},
		{"exp null", e.forge(hdr, exp(`null`)), ErrMalformedToken},
		{"exp zero", e.forge(hdr, exp(`0`)), ErrMalformedToken},
		{"exp negative", e.forge(hdr, exp(`-1`)), ErrMalformedToken},
		{"exp in the past", e.forge(hdr, exp(strconv.FormatInt(now-1, 10))), ErrExpired},
		{"exp now", e.forge(hdr, exp(strconv.FormatInt(now, 10))), nil},
		{"nbf string", e.forge(hdr, nbf(`"1"`)), ErrMalformedToken},
		{"nbf float", e.forge(hdr, nbf(strconv.FormatInt(now, 10)+".5")), ErrMalformedToken},
		{"nbf in the future", e.forge(hdr, nbf(strconv.FormatInt(now+1, 10))), ErrNotYetValid},
		{"nbf now", e.forge(hdr, nbf(strconv.FormatInt(now, 10))), nil},
		{"sub missing", e.forge(hdr, `{"exp":`+strconv.FormatInt(now+60, 10)+`,"jti":"j"}`), ErrMalformedToken},
		{"jti missing", e.forge(hdr, `{"exp":`+strconv.FormatInt(now+60, 10)+`,"sub":"s"}`), ErrMalformedToken},
		{"aud as string", e.forge(hdr, payloadAt(now, `"aud":"svc"`)), ErrMalformedToken},
		{"scope as string", e.forge(hdr, `{"sub":"s","exp":`+strconv.FormatInt(now+60, 10)+`,"jti":"j","scope":"read:data:x"}`), ErrMalformedToken},
		{"sub as number", e.forge(hdr, `{"sub":1,"exp":`+strconv.FormatInt(now+60, 10)+`,"jti":"j"}`), ErrMalformedToken},
		{"chain as object", e.forge(hdr, payloadAt(now, `"delegation_chain":{"agent":"x"}`)), ErrMalformedToken},
		{"duplicate scope", e.forge(hdr, payloadAt(now, `"scope":["*:*:*"]`)), ErrMalformedToken},
		{"scope + Scope", e.forge(hdr, payloadAt(now, `"Scope":["admin:revoke:*"]`)), ErrMalformedToken},
		{"scope + SCOPE", e.forge(hdr, payloadAt(now, `"SCOPE":["admin:revoke:*"]`)), ErrMalformedToken},
		{"scope + long-s cope", e.forge(hdr, payloadAt(now, `"ſcope":["admin:revoke:*"]`)), ErrMalformedToken},
		{"scope + escaped Scope", e.forge(hdr, payloadAt(now, `"\u0053cope":["admin:revoke:*"]`)), ErrMalformedToken},
		{"sub + SUB", e.forge(hdr, payloadAt(now, `"SUB":"admin"`)), ErrMalformedToken},
		{"task_id + Kelvin-free variant", e.forge(hdr, payloadAt(now, `"task_id":"a","TASK_ID":"b"`)), ErrMalformedToken},
		{"nested duplicate in chain", e.forge(hdr, payloadAt(now, `"delegation_chain":[{"agent":"a","Agent":"b"}]`)), ErrMalformedToken},
		{"single case-variant key (upstream accepts)", e.forge(hdr, strings.Replace(payloadAt(now, ""), `"sub"`, `"SUB"`, 1)), nil},
		{"unknown claims ignored", e.forge(hdr, payloadAt(now, `"x":{"y":[1,2,{"z":null}]}`)), nil},
		{"too deep", e.forge(hdr, payloadAt(now, `"x":`+strings.Repeat("[", 40)+strings.Repeat("]", 40))), ErrMalformedToken},
		{"padded signature", good + "==", ErrMalformedToken},
		{"padded payload", gp[0] + "." + gp[1] + "=." + gp[2], ErrMalformedToken},
		{"padded header", gp[0] + "=." + gp[1] + "." + gp[2], ErrMalformedToken},
		{"64 KiB of dots", strings.Repeat(".", 64<<10), ErrMalformedToken},
		{"oversized", good + strings.Repeat("A", MaxTokenLength), ErrMalformedToken},
	}
	if s, ok := nonCanonical(t, gp[2]); ok {
		cases = append(cases, struct {
			name string
			tok  string
			want error
		}{"signature unused bits", gp[0] + "." + gp[1] + "." + s, ErrMalformedToken})
	}
	// A payload and a header whose encodings have unused bits, signed over
	// the non-canonical text so only the encoding rule can refuse them.
	for pad := 0; pad < 3; pad++ {
		p := b64u([]byte(payloadAt(now, `"p":"`+strings.Repeat("x", pad)+`"`)))
		if s, ok := nonCanonical(t, p); ok {
			in := gp[0] + "." + s
			cases = append(cases, struct {
				name string
				tok  string
				want error
			}{"payload unused bits", in + "." + b64u(ed25519.Sign(e.broker.signer().key, []byte(in))), ErrMalformedToken})
		}
		h := b64u([]byte(`{"alg":"EdDSA","x":"` + strings.Repeat("x", pad) + `"}`))
		if s, ok := nonCanonical(t, h); ok {
			in := s + "." + gp[1]
			cases = append(cases, struct {
				name string
				tok  string
				want error
			}{"header unused bits", in + "." + b64u(ed25519.Sign(e.broker.signer().key, []byte(in))), ErrMalformedToken})
		}
	}

	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, verify := range []func(string) (*Claims, error){
				func(s string) (*Claims, error) { return e.broker.Verify(ctx, s) },
				e.broker.verifier.verify, // no cache
			} {
				c, err := verify(tc.tok)
				if tc.want == nil {
					require.NoError(t, err)
					require.NotNil(t, c)
					continue
				}
				require.Nil(t, c)
				require.ErrorIs(t, err, tc.want)
				require.ErrorIs(t, err, ErrInvalidToken)
			}
			// The validate route answers the same way, always 200.
			rec := serve(e.broker, "POST", "/v1/token/validate", "", mustJSON(t, map[string]string{"token": tc.tok}))
			if tc.tok == "" {
				requireProblem(t, rec, http.StatusBadRequest, "invalid_request", "token field is required")
				return
			}
			require.Equal(t, http.StatusOK, rec.Code)
			require.Equal(t, tc.want == nil, decode(t, rec)["valid"])
		})
	}
}

// TestVerifyIssuerAndAudience: the issuer is enforced by Verify when
// configured; the audience only on Bearer routes.
func TestVerifyIssuerAndAudience(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk), func(c *Config) { c.Issuer = "https://broker.example"; c.Audience = "svc-a" })
	now := clk.Now().Unix()
	ctx := context.Background()
	for iss, want := range map[string]error{
		`""`:                        ErrIssuerMismatch,
		`"https://broker.example/"`: ErrIssuerMismatch,
		`"HTTPS://BROKER.EXAMPLE"`:  ErrIssuerMismatch,
		`"https://broker.example"`:  nil,
	} {
		tok := e.forge(e.ourHeader(), strings.Replace(payloadAt(now, `"aud":["svc-a"]`), `"iss":""`, `"iss":`+iss, 1))
		_, err := e.broker.Verify(ctx, tok)
		if want == nil {
			require.NoError(t, err, iss)
		} else {
			require.ErrorIs(t, err, want, iss)
		}
	}
	// Missing iss entirely.
	tok := e.forge(e.ourHeader(), strings.Replace(payloadAt(now, ""), `"iss":"",`, "", 1))
	_, err := e.broker.Verify(ctx, tok)
	require.ErrorIs(t, err, ErrIssuerMismatch)

	// Audience: refused on a Bearer route, ignored by validate.
	sub := "spiffe://agentwrit.local/agent/o/t/0123456789abcdef"
	for _, aud := range [][]string{nil, {"svc-b"}, {"SVC-A"}, {"svc-a "}} {
		tok := e.issueToken(Claims{Sub: sub, Aud: aud, Scope: []string{"read:data:x"}, TaskID: "t", OrchID: "o"}, 60)
		requireProblem(t, e.do("POST", "/v1/token/renew", tok, nil), http.StatusUnauthorized, "unauthorized", "token audience mismatch")
		require.Equal(t, true, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok}))["valid"])
	}
	ok := e.issueToken(Claims{Sub: sub, Aud: []string{"svc-b", "svc-a"}, Scope: []string{"read:data:x"}}, 60)
	require.Equal(t, http.StatusOK, e.do("POST", "/v1/token/renew", ok, nil).Code)
}

// TestVerifyDotsRejectedWithoutDecoding: a flood of dots (or any oversized
// input) is refused by the precheck, which allocates nothing, so no base64
// or JSON decoding took place.
func TestVerifyDotsRejectedWithoutDecoding(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	for _, tok := range []string{
		strings.Repeat(".", 64<<10),
		strings.Repeat(".", 100),
		strings.Repeat("A", MaxTokenLength+1),
		strings.Repeat("A", 8<<10) + "." + strings.Repeat("A", 4<<10) + "=.A",
	} {
		var err error
		allocs := testing.AllocsPerRun(100, func() { _, err = e.broker.Verify(ctx, tok) })
		require.ErrorIs(t, err, ErrMalformedToken)
		require.Zero(t, allocs, "rejected before any decoding")
	}
}

// TestVerifyMaxTokenLength: the largest genuine token that fits verifies,
// one byte more is refused unread.
func TestVerifyMaxTokenLength(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	now := clk.Now().Unix()
	var fit string
	for n := MaxTokenLength*3/4 - 400; ; n++ {
		tok := e.forge(e.ourHeader(), payloadAt(now, `"pad":"`+strings.Repeat("p", n)+`"`))
		if len(tok) > MaxTokenLength {
			_, err := e.broker.Verify(context.Background(), tok)
			require.ErrorIs(t, err, ErrMalformedToken)
			break
		}
		fit = tok
	}
	require.GreaterOrEqual(t, len(fit), MaxTokenLength-2)
	_, err := e.broker.Verify(context.Background(), fit)
	require.NoError(t, err)
}

// TestFoldNameMatchesEncodingJSON: foldName groups names exactly as
// encoding/json matches them to struct fields.
func TestFoldNameMatchesEncodingJSON(t *testing.T) {
	for _, pair := range [][2]string{
		{"scope", "Scope"}, {"scope", "SCOPE"}, {"scope", "ſcope"}, {"task_id", "TASK_ID"},
		{"k", "\u212a"}, {"sub", "ſub"}, {"é", "É"},
	} {
		require.Equal(t, foldName(pair[0]), foldName(pair[1]), pair)
		require.Error(t, uniqueKeys([]byte(`{"`+pair[0]+`":1,"`+pair[1]+`":2}`)), pair)
	}
	for _, pair := range [][2]string{{"scope", "scopes"}, {"sub", "sud"}, {"a_b", "ab"}} {
		require.NotEqual(t, foldName(pair[0]), foldName(pair[1]), pair)
		require.NoError(t, uniqueKeys([]byte(`{"`+pair[0]+`":1,"`+pair[1]+`":2}`)), pair)
	}
}

// smallOrderPoints are the canonical encodings of the eight points of
// order 1, 2, 4 and 8 on edwards25519 (the identity first).
var smallOrderPoints = []string{
	"0100000000000000000000000000000000000000000000000000000000000000", // identity
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2
	"0000000000000000000000000000000000000000000000000000000000000000", // order 4
	"0000000000000000000000000000000000000000000000000000000000000080", // order 4
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", // order 8
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", // order 8
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", // order 8
}

// nonCanonicalPoints encode valid points with y ≥ p or a negative zero x.
var nonCanonicalPoints = []string{
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p+1: the identity
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p: an order-4 point
	"0100000000000000000000000000000000000000000000000000000000000080", // identity, x sign bit set
}

// TestRegisterRefusesWeakKeys: with a small-order public key, a forged
// signature (R = identity, S = 0) passes ed25519.Verify for some nonces and,
// for the identity key, for every nonce. Registration must refuse the key
// itself.
func TestRegisterRefusesWeakKeys(t *testing.T) {
	e := newTestEnv(t)
	lt := e.mkLaunch(map[string]any{"single_use": false})
	forged := make([]byte, ed25519.SignatureSize)
	forged[0] = 1 // R = encoding of the identity, S = 0

	identity, _ := hex.DecodeString(smallOrderPoints[0])
	for range 5 { // any message at all
		msg := make([]byte, 32)
		_, _ = rand.Read(msg)
		require.True(t, ed25519.Verify(identity, msg, forged), "ed25519.Verify alone accepts the identity-key forgery")
	}

	register := func(pub, sig []byte, nonce string) *http.Request {
		return newRequest("POST", "/v1/register", string(mustJSON(t, map[string]any{
			"launch_token": lt, "nonce": nonce,
			"public_key": base64.StdEncoding.EncodeToString(pub),
			"signature":  base64.StdEncoding.EncodeToString(sig),
			"orch_id":    "orch-1", "task_id": "task-1", "requested_scope": []string{"read:data:x"},
		})))
	}
	for _, h := range smallOrderPoints {
		pub, err := hex.DecodeString(h)
		require.NoError(t, err)
		p, err := new(edwards25519.Point).SetBytes(pub)
		require.NoError(t, err, h)
		require.Equal(t, 1, new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()), "%s is small-order", h)
		require.True(t, weakPublicKey(pub), h)

		// Find a nonce the forgery verifies for (1 in 8 at worst), to prove
		// the signature check alone would have let it through.
		var nonce string
		for range 400 {
			n := e.nonce()
			nb, _ := hex.DecodeString(n)
			if ed25519.Verify(pub, nb, forged) {
				nonce = n
				break
			}
		}
		require.NotEmpty(t, nonce, "%s: no nonce accepted the forgery", h)
		requireProblem(t, e.doReq(register(pub, forged, nonce)), http.StatusUnauthorized, "unauthorized",
			"invalid Ed25519 public key: small-order or non-canonical point")
	}
	for _, h := range nonCanonicalPoints {
		pub, err := hex.DecodeString(h)
		require.NoError(t, err)
		require.True(t, weakPublicKey(pub), h)
		requireProblem(t, e.doReq(register(pub, forged, e.nonce())), http.StatusUnauthorized, "unauthorized",
			"invalid Ed25519 public key: small-order or non-canonical point")
	}
	// Not on the curve at all.
	notOnCurve, _ := hex.DecodeString("0200000000000000000000000000000000000000000000000000000000000000")
	require.True(t, weakPublicKey(notOnCurve))
	requireProblem(t, e.doReq(register(notOnCurve, forged, e.nonce())), http.StatusUnauthorized, "unauthorized", "")
	// Ordinary keys pass, and no agent was registered by any of the above.
	for range 20 {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
		require.False(t, weakPublicKey(pub))
	}
	require.Empty(t, e.events(EventAgentRegistered))
}

// TestBadBodies: non-JSON bodies, wrong types and oversized bodies on the
// JSON routes are client errors, never 5xx, never a success.
func TestBadBodies(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	_, agent := e.mkAgent(0, "read:data:x")
	type route struct{ method, path, bearer string }
	routes := []route{
		{"POST", "/v1/token/validate", ""},
		{"POST", "/v1/register", ""},
		{"POST", "/v1/revoke", admin},
		{"POST", "/v1/delegate", agent},
		{"POST", "/v1/admin/launch-tokens", admin},
		{"POST", "/v1/admin/apps", admin},
		{"PUT", "/v1/admin/apps/app-x", admin},
	}
	bodies := []string{"", "not json", "{", `{"a":`, "[1,2]", `"str"`, "\x00\xff", `{"token":}`}
	for _, r := range routes {
		for _, body := range bodies {
			rec := serve(e.broker, r.method, r.path, r.bearer, []byte(body))
			require.Less(t, rec.Code, 500, "%s %s %q: %s", r.method, r.path, body, rec.Body)
			require.False(t, okStatus(rec.Code), "%s %s %q: %s", r.method, r.path, body, rec.Body)
			require.Equal(t, http.StatusBadRequest, rec.Code, "%s %s %q: %s", r.method, r.path, body, rec.Body)
		}
	}
	// Wrong types: a string where an array or number belongs, and so on.
	wrong := []struct {
		route
		body string
	}{
		{routes[0], `{"token":123}`},
		{routes[0], `{"token":["a"]}`},
		{routes[1], `{"launch_token":"x","nonce":"n","public_key":"k","signature":"s","orch_id":"o","task_id":"t","requested_scope":"read:data:x"}`},
		{routes[1], `{"launch_token":1}`},
		{routes[2], `{"level":1,"target":"x"}`},
		{routes[2], `{"level":"token","target":["x"]}`},
		{routes[3], `{"delegate_to":"x","scope":"read:data:x"}`},
		{routes[3], `{"delegate_to":"x","scope":["read:data:x"],"ttl":"60"}`},
		{routes[3], `{"delegate_to":"x","scope":["read:data:x"],"ttl":60.5}`},
		{routes[4], `{"agent_name":"a","allowed_scope":["read:data:x"],"max_ttl":30.5}`},
		{routes[4], `{"agent_name":"a","allowed_scope":["read:data:x"],"single_use":"yes"}`},
		{routes[5], `{"name":"ab","scopes":"read:data:x"}`},
		{routes[6], `{"token_ttl":"60"}`},
	}
	for _, w := range wrong {
		rec := serve(e.broker, w.method, w.path, w.bearer, []byte(w.body))
		requireProblem(t, rec, http.StatusBadRequest, "invalid_request", "malformed JSON body")
	}
	// Admin auth (rate-limited: few cases).
	for _, body := range []string{"nope", `{"secret":5}`, `{"secret":"x"} trailing`} {
		rec := serve(e.broker, "POST", "/v1/admin/auth", "", []byte(body))
		requireProblem(t, rec, http.StatusBadRequest, "invalid_request", "malformed JSON body")
	}

	// Body limit: exactly 1 MiB is read, one byte more is 413 everywhere.
	exact := []byte(`{"token":"` + strings.Repeat("a", MaxBodyBytes-len(`{"token":""}`)) + `"}`)
	require.Len(t, exact, MaxBodyBytes)
	rec := serve(e.broker, "POST", "/v1/token/validate", "", exact)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, false, decode(t, rec)["valid"])
	over := append(exact[:len(exact):len(exact)], ' ')
	for _, r := range append(routes, route{"GET", "/v1/challenge", ""}, route{"POST", "/v1/admin/auth", ""}) {
		rec := serve(e.broker, r.method, r.path, r.bearer, over)
		requireProblem(t, rec, http.StatusRequestEntityTooLarge, "payload_too_large", "")
	}
}
