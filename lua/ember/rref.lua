-- ember.rref: remote references (rpc.remote, rpc.RRef). Extends ember.rpc.
return {}
