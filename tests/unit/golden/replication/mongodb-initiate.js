// Written by voxnode-agent: initiates the chat database's replica set.
rs.initiate({
  "_id": "voxnode-chat",
  "members": [
    {
      "_id": 0,
      "host": "10.0.0.11:27017",
      "priority": 1,
      "votes": 1
    },
    {
      "_id": 1,
      "host": "10.0.0.12:27017",
      "priority": 1,
      "votes": 1
    },
    {
      "_id": 2,
      "host": "10.0.0.1:27017",
      "arbiterOnly": true,
      "votes": 1
    }
  ],
  "settings": {
    "electionTimeoutMillis": 5000,
    "heartbeatTimeoutSecs": 5
  }
});
db.adminCommand({
  "setDefaultRWConcern": 1,
  "defaultWriteConcern": {
    "w": 1,
    "j": true,
    "wtimeout": 5000
  },
  "defaultReadConcern": {
    "level": "local"
  }
});
